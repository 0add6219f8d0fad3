"""The attention kernels of `config.model.attention`: splash (in Pallas interpret mode on CPU)
equals XLA's dense-mask attention on real tokens, values and gradients; start-up resolves
"auto" by platform; and the splash kernel compiles for a TPU topology without forming [t, t]
scores."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mm1_jax.config import ConfigError, base_config, validate
from mm1_jax.models import attention
from mm1_jax.models.kernels import Kernels
from mm1_jax.startup import resolve_kernels, start
from mm1_jax.data.synthetic import SPECIAL
from tests.models import build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _segments(t: int) -> np.ndarray:
    """Two packed rows of t tokens: 3 documents + padding, and 2 documents + padding."""
    seg = np.zeros((2, t), np.int32)
    seg[0, :90], seg[0, 90:200], seg[0, 200:t - 40] = 1, 2, 3
    seg[1, :150], seg[1, 150:t - 7] = 1, 2
    return seg


def attention_case(impl: str) -> dict[str, np.ndarray]:
    """Output and d loss / d (q, k, v) of `impl` on one GQA case (4 query heads over 2 kv heads),
    under whatever mesh is set. The loss weighs real tokens only: padding outputs are unused.
    t = 300 is padded to 384 = 3 blocks of 128, so splash's online softmax runs over several kv
    blocks and skips those above the diagonal."""
    b, t, n, g, k = 2, 300, 4, 2, 32
    rng = np.random.default_rng(0)
    q, kk, v = (jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32) for h in (n, g, g))
    seg = jnp.asarray(_segments(t))
    w = jnp.asarray(rng.normal(size=(b, t, n, k)), jnp.float32) * (seg != 0)[..., None, None]

    def loss(q, k, v):
        out = attention.packed_attention(q, k, v, seg, Kernels(attention=impl, interpret=True))
        return jnp.sum(out * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, kk, v)
    return {"out": np.asarray(out), "seg": np.asarray(seg),
            **{f"d{name}": np.asarray(x) for name, x in zip("qkv", grads)}}


def test_xla_blocks_equal_dense_mask_attention_values_and_gradients():
    """The "xla" kernel (query blocks that skip the causal upper triangle) against
    `jax.nn.dot_product_attention` with the dense mask, on the GQA packed case: t = 300 cuts
    into 2 blocks of 150."""
    want = attention_case("xla")
    seg = jnp.asarray(want["seg"])

    def dense(q, k, v, segment_ids, kernels):
        return jax.nn.dot_product_attention(q, k, v,
                                            mask=attention.attention_mask(segment_ids, segment_ids))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention, "packed_attention", dense)
        ref = attention_case("xla")
    real = want["seg"] != 0
    np.testing.assert_allclose(want["out"][real], ref["out"][real], rtol=1e-5, atol=2e-5)
    for name in ("dq", "dk", "dv"):
        np.testing.assert_allclose(want[name], ref[name], rtol=1e-4, atol=2e-5, err_msg=name)
    assert seg.shape[1] == 300


def test_sharded_splash_equals_xla_values_and_gradients(tmp_path):
    """Splash inside `shard_map` on a fsdp=2 x tensor=2 mesh of 4 CPU devices (a row per fsdp
    shard; a kv head and its 2 query heads per tensor shard) against XLA on one device."""
    script = textwrap.dedent(f"""
        import jax, numpy as np
        from mm1_jax.sharding import make_mesh
        from tests.models.test_attention import attention_case
        want = attention_case("xla")
        with jax.set_mesh(make_mesh((1, 2, 2, 1))):
            got = attention_case("splash")
        np.savez({str(tmp_path / "want.npz")!r}, **want)
        np.savez({str(tmp_path / "got.npz")!r}, **got)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    want, got = np.load(tmp_path / "want.npz"), np.load(tmp_path / "got.npz")
    real = want["seg"] != 0
    assert np.isfinite(got["out"]).all()
    np.testing.assert_allclose(got["out"][real], want["out"][real], rtol=1e-5, atol=1e-5)
    for name in ("dq", "dk", "dv"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def _decoder_cfg(impl: str):
    cfg = base_config()
    d = cfg.model.decoder
    d.vocab_size, d.width, d.depth, d.heads, d.kv_heads, d.head_dim, d.mlp_dim = 97, 64, 2, 4, 2, 16, 96
    cfg.model.dtype, cfg.model.remat, cfg.model.attention = "float32", "full", impl
    return validate(cfg)


def test_decoder_with_splash_equals_xla_through_its_parameters():
    """The whole decoder (scale, layouts, remat, two layers): logits on real tokens and the
    gradient of a masked loss with respect to every parameter."""
    t = 256
    seg = _segments(t)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 97, seg.shape))
    positions = jnp.asarray(np.stack([_positions(r) for r in seg]))
    segment_ids = jnp.asarray(seg)

    def loss(dec):
        logits, _ = dec(dec.embed_tokens(tokens), positions, segment_ids)
        logp = jax.nn.log_softmax(logits)
        picked = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
        return -(picked * (segment_ids != 0)).sum(), logits

    results = {}
    for impl in ("xla", "splash"):
        dec = build.decoder(_decoder_cfg(impl), rngs=nnx.Rngs(0))
        (_, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(dec)
        results[impl] = logits, nnx.to_flat_state(nnx.state(grads))
    real = seg != 0
    np.testing.assert_allclose(np.asarray(results["splash"][0])[real],
                               np.asarray(results["xla"][0])[real], rtol=1e-5, atol=1e-5)
    gx, gs = dict(results["xla"][1]), dict(results["splash"][1])
    assert gx.keys() == gs.keys() and len(gx) > 5
    for path in gx:  # sums over 512 tokens: float32 rounding relative to the largest entry
        scale = np.abs(gx[path][...]).max()
        np.testing.assert_allclose(gs[path][...], gx[path][...], rtol=1e-5, atol=1e-5 * scale,
                                   err_msg="/".join(map(str, path)))


def _positions(row: np.ndarray) -> np.ndarray:
    """Positions restarting at every document (as the packer writes them)."""
    starts = np.r_[0, np.flatnonzero(np.diff(row)) + 1]
    pos = np.arange(len(row))
    return pos - starts[np.searchsorted(starts, pos, side="right") - 1]


@pytest.mark.parametrize("requested, platform, dtype, want", [
    ("auto", "cpu", jnp.float32, "xla"), ("auto", "cpu", jnp.bfloat16, "xla"),
    ("auto", "tpu", jnp.bfloat16, "splash"), ("auto", "gpu", jnp.bfloat16, "cudnn"),
    ("auto", "gpu", jnp.float32, "xla"), ("xla", "tpu", jnp.float32, "xla"),
    ("splash", "cpu", jnp.float32, "splash")])
def test_start_up_resolves_the_kernel_by_platform(requested, platform, dtype, want):
    cfg = base_config()
    cfg.model.attention, cfg.model.dtype = requested, jnp.dtype(dtype).name
    assert resolve_kernels(cfg.model, platform).attention == want


def test_auto_runs_xla_on_this_cpu():
    assert start(_decoder_cfg("auto"), special=SPECIAL, corpus=False).kernels.attention == "xla"
    q, seg = jnp.ones((1, 128, 2, 8)), jnp.ones((1, 128), jnp.int32)
    jaxpr = {impl: str(jax.make_jaxpr(lambda q: attention.packed_attention(
                 q, q, q, seg, resolve_kernels(_decoder_cfg(impl).model, "cpu")))(q))
             for impl in ("auto", "splash")}
    assert "pallas_call" not in jaxpr["auto"] and "pallas_call" in jaxpr["splash"]


def test_kernels_that_cannot_run_are_config_errors():
    with pytest.raises(ConfigError, match="config.model.attention"):
        validate(_decoder_cfg("flash"))
    cfg = _decoder_cfg("xla")
    cfg.model.attention = "cudnn"  # in float32
    with pytest.raises(ConfigError, match="config.model.attention: cuDNN.*'float32'"):
        validate(cfg)
    cfg.model.dtype = "bfloat16"  # valid, but this machine has no GPU: start-up says so
    with pytest.raises(ConfigError, match="config.model.attention: 'cudnn' needs NVIDIA GPUs and "
                       "the devices are cpu"):
        start(cfg, special=SPECIAL, corpus=False)
    cfg.model.attention = "splash"
    with pytest.raises(ConfigError, match="'splash' is a Pallas TPU kernel"):
        resolve_kernels(cfg.model, "gpu")


# ----------------------------------------------------------------- TPU, compiled ahead of time

T = 512  # no other dimension of the TPU config below equals it
# HLO: float32 scores [.., q, t] of a query block (q a multiple of 128) over all t keys.
SCORES = re.compile(rf"f32\[(?:[0-9]+,)+(?:128|256|384|{T}),{T}\]")


def _tpu_config(impl: str):
    """A narrow MM1 at t = 512 on v5p-8 as fsdp=2 x tensor=2: 4 query heads and 2 kv heads
    split over `tensor`. remat "none": every activation the backward pass needs is kept."""
    c = base_config()
    v = c.model.vision
    v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim = 28, 14, 64, 1, 2, 128
    c.model.connector.num_tokens, c.model.connector.hidden, c.model.connector.depth = 4, 64, 1
    d = c.model.decoder
    d.vocab_size, d.width, d.depth, d.heads, d.kv_heads, d.head_dim, d.mlp_dim = (
        4096, 256, 2, 4, 2, 128, 768)
    c.model.attention, c.model.remat = impl, "none"
    c.data.max_images = 0
    c.train.seq_len, c.train.batch_size = T, 4
    c.mesh.shape = (1, 2, 2, 1)
    return c


@pytest.fixture(scope="module")
def tpu_step():
    """The trainer's step compiled for v5p-8: a function of `config.model.attention`."""
    pytest.importorskip("libtpu", reason="needs the tpu extra (libtpu compiles for a TPU "
                        "topology without a TPU)")
    from mm1_jax.aot import compile_train_step, topology_devices

    devices = topology_devices("v5p-8")
    return functools.cache(lambda impl: compile_train_step(_tpu_config(impl), devices)[0])


def test_splash_compiles_for_tpu_without_t_by_t_scores(tpu_step):
    """"auto" on TPU is the Mosaic kernel, forward and backward (dq, dkv) inside the sharded
    step, and no float32 [.., t, t] array is left in the program."""
    hlo = tpu_step("auto").as_text()
    assert hlo.count("tpu_custom_call") >= 3
    assert not SCORES.search(hlo), SCORES.search(hlo)


@pytest.mark.slow
def test_splash_holds_less_than_xla_on_tpu(tpu_step):
    """The XLA program of the same step keeps float32 probabilities per layer for the backward
    pass (so the test above could fail): its 4 query blocks of 128 score 128, 256, 384 and 512
    keys, 10/16 of [t, t]. Splash keeps none."""
    xla = tpu_step("xla")
    assert SCORES.search(xla.as_text()) and "tpu_custom_call" not in xla.as_text()
    temps = {impl: tpu_step(impl).memory_analysis().temp_size_in_bytes for impl in ("auto", "xla")}
    d = _tpu_config("xla").model.decoder
    rows, heads = 4 // 2, d.heads // 2  # per chip: batch over fsdp=2, heads over tensor=2
    probabilities = d.depth * rows * heads * T * T * 10 // 16 * 4
    assert temps["xla"] - temps["auto"] >= probabilities, (temps, probabilities)
