"""Connectors against PyTorch: adaptive pooling, a Honeybee-layout C-Abstractor, avg/attn pooling.

The torch C-Abstractor below is written here from Honeybee's and timm's module structure (timm
itself needs torchvision): same module tree and parameter names, so its state_dict is what a
Honeybee checkpoint holds and goes through mm1_jax/convert/honeybee.py unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from mm1_jax.config import base_config
from mm1_jax.convert import honeybee
from mm1_jax.convert.common import load_params
from mm1_jax.models import connector as conn
from mm1_jax.config import vision_grid
from tests.models import build

def make_cfg(kind="c_abstractor", *, v=32, c=32, d=48, depth=2, grid=9, tokens=16, mlp_depth=2,
             heads=4, dtype="float32"):
    cfg = base_config()
    cfg.model.dtype = dtype
    cfg.model.vision.width = v
    cfg.model.vision.image_size = grid * cfg.model.vision.patch_size
    k = cfg.model.connector
    k.kind, k.hidden, k.depth, k.num_tokens, k.mlp_depth, k.attn_heads = (
        kind, c, depth, tokens, mlp_depth, heads)
    cfg.model.decoder.width = d
    return cfg


def count(module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Weights of order-one effect everywhere (Honeybee's 0.02 init would hide mistakes)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm = ".bn." in name or name.startswith("ln_")
            if p.ndim == 1 and is_norm and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(fan_in, 1)))


# ------------------------------------------------------------------------- torch references


class TConvNormAct(nn.Module):
    """timm ConvNormAct(norm_layer=LayerNorm2d): `.conv` (no bias) and `.bn` (LayerNormAct2d)."""

    def __init__(self, cin, cout, k, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
        self.bn = nn.LayerNorm(cout, eps=1e-5)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return nn.functional.silu(x) if self.act else x


class TSE(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = nn.functional.silu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.fc2(s))


class TBottleneck(nn.Module):
    def __init__(self, cin, cout, se_ratio=0.25):
        super().__init__()
        self.conv1 = TConvNormAct(cin, cout, 1)
        self.conv2 = TConvNormAct(cout, cout, 3, groups=cout)
        self.se = TSE(cout, int(round(cin * se_ratio)))
        self.conv3 = TConvNormAct(cout, cout, 1, act=False)
        self.downsample = TConvNormAct(cin, cout, 1, act=False) if cin != cout else nn.Identity()

    def forward(self, x):
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return nn.functional.silu(y + self.downsample(x))


class TRegStage(nn.Module):
    def __init__(self, depth, cin, cout):
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", TBottleneck(cin if i == 0 else cout, cout))

    def forward(self, x):
        for block in self.children():
            x = block(x)
        return x


class TCAbstractor(nn.Module):
    """Honeybee CAbstractor: pos_emb, net = (RegStage, AdaptiveAvgPool2d, RegStage), readout."""

    def __init__(self, p, v, c, d, depth, side, mlp_depth):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, p, v))
        self.net = nn.Sequential(TRegStage(depth, v, c), nn.AdaptiveAvgPool2d((side, side)),
                                 TRegStage(depth, c, c))
        mods = [nn.Linear(c, d)]
        for _ in range(1, mlp_depth):
            mods += [nn.SiLU(), nn.Linear(d, d)]
        self.readout = nn.Sequential(*mods)

    def forward(self, x):
        x = x + self.pos_emb
        n, p, v = x.shape
        g = int(p**0.5)
        x = x.transpose(1, 2).reshape(n, v, g, g)  # b (h w) d -> b d h w
        x = self.net(x)
        x = x.flatten(2).transpose(1, 2)  # b d h w -> b (h w) d
        return self.readout(x)


def torch_cabstractor(cfg, gen):
    k = cfg.model.connector
    g = cfg.model.vision.image_size // cfg.model.vision.patch_size
    m = TCAbstractor(g * g, cfg.model.vision.width, k.hidden, cfg.model.decoder.width, k.depth,
                     math.isqrt(k.num_tokens), k.mlp_depth)
    randomize(m, gen)
    return m.eval()


def state_numpy(m: nn.Module) -> dict[str, np.ndarray]:
    return honeybee.to_numpy(m.state_dict())


# ------------------------------------------------------------------------- adaptive pooling


@pytest.mark.parametrize("hw,out", [((27, 27), (12, 12)), ((24, 24), (12, 12)),
                                    ((48, 48), (12, 12)), ((24, 24), (8, 8)),
                                    ((27, 20), (12, 7))])
def test_adaptive_avg_pool_matches_torch(hw, out):
    x = np.random.default_rng(0).normal(size=(2, *hw, 5)).astype(np.float32)
    ref = nn.AdaptiveAvgPool2d(out)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    got = jax.jit(conn.adaptive_avg_pool2d, static_argnums=1)(jnp.asarray(x), out)
    assert got.shape == (2, *out, 5)
    np.testing.assert_allclose(np.asarray(got), ref.numpy(), rtol=1e-6, atol=1e-6)


def test_fixed_stride_pool_would_be_caught_for_27_to_12():
    m = conn._pool_matrix(27, 12)
    starts = (m > 0).argmax(1)
    assert set(np.diff(starts)) == {2, 3}  # irregular window starts (0, 2, 4, 6, 9, ...) ...
    assert ((m > 0).sum(0) > 1).any()  # ... of 3-wide windows that overlap
    x = np.random.default_rng(1).normal(size=(1, 27, 27, 3)).astype(np.float32)
    ref = nn.AdaptiveAvgPool2d(12)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    # The usual "equivalent" fixed pool: stride floor(27/12) = 2, kernel 27 - 11*2 = 5.
    fixed = jax.lax.reduce_window(jnp.asarray(x), 0.0, jax.lax.add, (1, 5, 5, 1),
                                  (1, 2, 2, 1), "VALID") / 25
    assert fixed.shape == ref.shape
    assert np.abs(np.asarray(fixed) - ref.numpy()).max() > 0.1


# ------------------------------------------------------------------------- shapes, counts


@pytest.mark.parametrize("kind", ["c_abstractor", "avg_pool", "attn_pool"])
@pytest.mark.parametrize("grid,tokens", [(27, 144), (27, 64), (24, 144), (24, 64), (48, 144)])
def test_token_count_and_width(kind, grid, tokens):
    # At 48 (672-px SFT) the model is built for 27 and resizes its position embedding.
    cfg = make_cfg(kind, v=16, c=16, d=24, depth=1, grid=27 if grid == 48 else grid,
                   tokens=tokens)
    model = build.connector(cfg, rngs=nnx.Rngs(0))
    x = jnp.ones((2, grid * grid, 16))
    y = nnx.jit(lambda m, x: m(x))(model, x)
    assert y.shape == (2, tokens, 24)
    assert bool(jnp.isfinite(y).all())
    assert count(model) == num_params(cfg)


def test_param_count_formula_mm1_final():
    """Formula vs the module for the MM1 final shapes (ViT-H 1280 -> 1024 -> 3B-width 3072).

    Built abstractly: nnx.eval_shape allocates nothing, so the real sizes are cheap.
    """
    cfg = make_cfg(v=1280, c=1024, d=3072, depth=3, grid=27, tokens=144)
    model = nnx.eval_shape(lambda: build.connector(cfg, rngs=nnx.Rngs(0)))
    assert count(model) == num_params(cfg)
    # Hand-computed: pos 729*1280; block(1280->1024, r=320); 5 x block(1024, r=256); readout.
    b0 = 1280 * 1024 + 9 * 1024 + 1024**2 + 6 * 1024 + 2 * 1024 * 320 + 320 + 1024 \
        + 1280 * 1024 + 2 * 1024
    b = 1024 * 1024 + 9 * 1024 + 1024**2 + 6 * 1024 + 2 * 1024 * 256 + 256 + 1024
    assert num_params(cfg) == 729 * 1280 + b0 + 5 * b + 1024 * 3072 + 3072 + 3072**2 + 3072


# ------------------------------------------------------------------------- C-Abstractor vs torch


@pytest.mark.parametrize("shape", [
    dict(v=32, c=32, d=48, depth=2, grid=9, tokens=16, mlp_depth=2),
    # v != c exercises the shortcut conv and SE width round(26 * 0.25) = round(6.5) = 6.
    dict(v=26, c=32, d=48, depth=3, grid=27, tokens=144, mlp_depth=3),
])
def test_cabstractor_matches_honeybee_torch(shape):
    cfg = make_cfg(**shape)
    gen = torch.Generator().manual_seed(1)
    ref_model = torch_cabstractor(cfg, gen)
    p = shape["grid"] ** 2
    x = torch.randn(2, p, shape["v"], generator=gen)
    with torch.no_grad():
        ref = ref_model(x).numpy()

    model = build.connector(cfg, rngs=nnx.Rngs(0))
    sd = state_numpy(ref_model)
    assert sum(v.size for v in sd.values()) == num_params(cfg) == count(model)
    load_params(model, honeybee.cabstractor_params_from_torch(sd, cfg))
    got = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x.numpy()))
    assert got.shape == (2, shape["tokens"], shape["d"])
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


def test_converter_reads_full_checkpoints_and_rejects_unknown_keys():
    cfg = make_cfg()
    gen = torch.Generator().manual_seed(2)
    ref_model = torch_cabstractor(cfg, gen)
    x = torch.randn(1, 81, 32, generator=gen)
    with torch.no_grad():
        ref = ref_model(x).numpy()
    sd = state_numpy(ref_model)
    # A full Honeybee model's dict: prefixed keys, other modules, and an old-style CLS pos row.
    full = {f"abstractor.{k}": v for k, v in sd.items()}
    full["abstractor.pos_emb"] = np.concatenate([np.full((1, 1, 32), 9.0, np.float32),
                                                 sd["pos_emb"]], axis=1)
    full["language_model.lm_head.weight"] = np.zeros((3, 3), np.float32)
    model = build.connector(cfg, rngs=nnx.Rngs(0))
    load_params(model, honeybee.cabstractor_params_from_torch(full, cfg))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x.numpy()))), ref, rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="eos_tokens"):
        honeybee.cabstractor_params_from_torch({**sd, "eos_tokens": np.zeros((1, 1, 48))}, cfg)
    wider = make_cfg(d=64)  # same paths, other readout shapes
    with pytest.raises(ValueError, match="shape mismatch"):
        load_params(build.connector(wider, rngs=nnx.Rngs(0)),
                             honeybee.cabstractor_params_from_torch(sd, wider))


def test_cabstractor_bf16_close_to_float32():
    cfg32, cfg16 = make_cfg(), make_cfg(dtype="bfloat16")
    m32 = build.connector(cfg32, rngs=nnx.Rngs(0))
    m16 = build.connector(cfg16, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 81, 32))
    y32, y16 = m32(x), m16(x)
    assert y16.dtype == jnp.bfloat16
    assert m16.pos_emb[...].dtype == jnp.float32
    err = jnp.abs(y16.astype(jnp.float32) - y32).max() / jnp.abs(y32).max()
    assert err < 3e-2, float(err)


# ------------------------------------------------------------------------- pooling ablations


def test_avg_pool_connector_matches_torch():
    cfg = make_cfg("avg_pool", v=32, d=48, grid=27, tokens=144)
    gen = torch.Generator().manual_seed(3)
    lin = nn.Linear(32, 48)
    randomize(lin, gen)
    x = torch.randn(2, 27 * 27, 32, generator=gen)
    with torch.no_grad():
        grid = x.transpose(1, 2).reshape(2, 32, 27, 27)
        ref = lin(nn.AdaptiveAvgPool2d(12)(grid).flatten(2).transpose(1, 2)).numpy()
    model = build.connector(cfg, rngs=nnx.Rngs(0))
    load_params(model, {"proj": {"kernel": lin.weight.detach().numpy().T,
                                          "bias": lin.bias.detach().numpy()}})
    got = model(jnp.asarray(x.numpy()))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


class TAttnPool(nn.Module):
    def __init__(self, t, v, c, d, heads):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(t, c))
        self.kv_proj = nn.Linear(v, c, bias=False)
        self.ln_kv, self.ln_q, self.ln_post = (nn.LayerNorm(c) for _ in range(3))
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.proj = nn.Linear(c, d)

    def forward(self, x):
        kv = self.ln_kv(self.kv_proj(x))
        q = self.ln_q(self.queries).expand(x.shape[0], -1, -1)
        return self.proj(self.ln_post(self.attn(q, kv, kv, need_weights=False)[0]))


def test_attn_pool_connector_matches_torch_multihead_attention():
    t, v, c, d, a = 16, 24, 32, 48, 4
    cfg = make_cfg("attn_pool", v=v, c=c, d=d, grid=9, tokens=t, heads=a)
    gen = torch.Generator().manual_seed(4)
    ref_model = TAttnPool(t, v, c, d, a)
    randomize(ref_model, gen)
    x = torch.randn(2, 81, v, generator=gen)
    with torch.no_grad():
        ref = ref_model(x).numpy()
    sd = state_numpy(ref_model)
    wq, wk, wv = np.split(sd["attn.in_proj_weight"], 3)
    bq, bk, bv = np.split(sd["attn.in_proj_bias"], 3)
    heads = lambda w: w.T.reshape(c, a, c // a)  # noqa: E731
    ln = lambda n: {"scale": sd[f"{n}.weight"], "bias": sd[f"{n}.bias"]}  # noqa: E731
    params = {
        "queries": sd["queries"], "kv_proj": {"kernel": sd["kv_proj.weight"].T},
        "ln_kv": ln("ln_kv"), "ln_q": ln("ln_q"), "ln_post": ln("ln_post"),
        "wq": heads(wq), "wk": heads(wk), "wv": heads(wv),
        "bq": bq, "bk": bk, "bv": bv,
        "wo": sd["attn.out_proj.weight"].T.reshape(a, c // a, c), "bo": sd["attn.out_proj.bias"],
        "proj": {"kernel": sd["proj.weight"].T, "bias": sd["proj.bias"]},
    }
    model = build.connector(cfg, rngs=nnx.Rngs(0))
    load_params(model, params)
    got = model(jnp.asarray(x.numpy()))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- parameter counts
# Written independently of the module code, from the Honeybee / timm layer definitions.


def _bottleneck_params(c_in: int, c: int, se_ratio: float) -> int:
    r = conn.se_width(c_in, se_ratio) if se_ratio else 0
    n = c_in * c + 9 * c + c * c + 3 * 2 * c  # conv1, depthwise conv2, conv3, their 3 LNs
    n += (2 * c * r + r + c) if se_ratio else 0  # SE fc1 + fc2 with biases
    n += (c_in * c + 2 * c) if c_in != c else 0  # shortcut conv + LN
    return n


def num_params(cfg) -> int:
    """Exact parameter count of the configured connector (independent of the module code)."""
    k = cfg.model.connector
    v, c, d, t = cfg.model.vision.width, k.hidden, cfg.model.decoder.width, k.num_tokens
    if k.kind == "avg_pool":
        return v * d + d
    if k.kind == "attn_pool":
        return t * c + v * c + 3 * 2 * c + 4 * (c * c + c) + c * d + d
    n = vision_grid(cfg.model.vision) ** 2 * v
    if k.depth:
        n += _bottleneck_params(v, c, k.se_ratio)
        n += (2 * k.depth - 1) * _bottleneck_params(c, c, k.se_ratio)
    width = c if k.depth else v
    return n + width * d + d + (k.mlp_depth - 1) * (d * d + d)
