"""MoEFeedForward against a per-token reference loop, hand-computed drops and aux-loss formulas."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mm1_jax.config import MESH_AXES, base_config
from mm1_jax.models.moe import capacity, group_shape, row_groups
from mm1_jax.sharding import logical_to_mesh
from tests.models import build


# Jitted entry points: eager op-by-op dispatch would make these tests several times slower.
@nnx.jit(static_argnames="train")
def call(layer, x, mask, train=True):
    return layer(x, mask, train=train)


def small_cfg(d=16, e=4, f=8, group_size=10, factor=1.25, mode="capacity", grouped_matmul="auto"):
    c = base_config()
    c.model.dtype = "float32"
    c.model.decoder.width = d
    m = c.model.moe
    m.num_experts, m.expert_mlp_dim, m.group_size = e, f, group_size
    m.capacity_factor, m.mode, m.grouped_matmul = factor, mode, grouped_matmul
    return c


def params_of(layer):
    return {k: getattr(layer, k)[...] for k in ("router", "wi_0", "wi_1", "wo")}


def reference(p, x, mask, top_k=2):
    """Token by token: softmax, top-k by sort, renormalise, run the chosen experts.

    Returns (y [T, D], load_balance_loss, z_loss) with x: [T, D], mask: [T] (numpy bool).
    Written with jnp so jax.grad can differentiate it; nothing is shared with the module.
    """
    e = p["router"].shape[1]
    rows, first_counts, prob_sum, z_sum, n = [], jnp.zeros(e), jnp.zeros(e), 0.0, 0
    for t in range(x.shape[0]):
        if not mask[t]:
            rows.append(jnp.zeros(x.shape[1]))
            continue
        logits = x[t] @ p["router"]
        probs = jnp.exp(logits - logits.max())
        probs = probs / probs.sum()
        chosen = jnp.argsort(-probs)[:top_k]
        w = probs[chosen] / probs[chosen].sum()
        out = 0.0
        for j in range(top_k):
            i = chosen[j]
            h = jax.nn.silu(x[t] @ p["wi_0"][i]) * (x[t] @ p["wi_1"][i])
            out = out + w[j] * (h @ p["wo"][i])
        rows.append(out)
        first_counts = first_counts.at[chosen[0]].add(1.0)
        prob_sum = prob_sum + probs
        z_sum = z_sum + (logits.max() + jnp.log(jnp.exp(logits - logits.max()).sum())) ** 2
        n += 1
    lb = e * jnp.sum((first_counts / n) * (prob_sum / n))
    return jnp.stack(rows), lb, z_sum / n


def on_mesh(layer, shape):
    """A (data, fsdp, tensor, expert) mesh of `shape` on the CPU devices, with the layer's
    parameters placed on it by their logical names through the rules table."""
    mesh = jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
    for _, var in nnx.iter_graph(layer):
        if isinstance(var, nnx.Param):
            spec = logical_to_mesh(var.get_metadata()["out_sharding"])
            var.value = jax.device_put(var[...], jax.NamedSharding(mesh, spec))
    return mesh


def run_on_cpu_devices(script: str, devices: int) -> None:
    """Runs `script` in a fresh interpreter that sees `devices` CPU devices; it prints OK."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def random_inputs(b, s, d, seed=0, pad_frac=0.25):
    kx, km = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (b, s, d), jnp.float32)
    mask = np.asarray(jax.random.uniform(km, (b, s)) >= pad_frac)
    return x, mask


def test_group_shape_and_capacity():
    assert group_shape(26, 10) == (3, 9)  # 27 slots: one padding token, not a 10/10/6 split
    assert group_shape(8192, 4096) == (2, 4096)
    assert group_shape(5, 4096) == (1, 5)
    assert capacity(4096, 64, 2, 1.25) == 160  # ceil(2 * 1.25 * 4096 / 64)
    assert capacity(9, 4, 2, 1.0) == 5  # ceil(4.5)
    assert capacity(9, 4, 2, 100.0) == 9  # an expert never holds more than the group


def test_row_groups_never_span_rows():
    t = jnp.arange(2 * 13)
    g = np.asarray(row_groups(t, rows=2, group_size=5, fill=-1))
    # Each row's 13 tokens in 3 groups of 5 (two padding tokens at the end of the row).
    np.testing.assert_array_equal(g, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, -1, -1],
                                      [13, 14, 15, 16, 17], [18, 19, 20, 21, 22],
                                      [23, 24, 25, -1, -1]])
    # A group_size above the row length: each row is one group.
    assert row_groups(jnp.zeros((26, 3)), rows=2, group_size=100, fill=0).shape == (2, 13, 3)


@pytest.mark.parametrize("e", [4, 8])
def test_no_drop_matches_reference_loop(e):
    cfg = small_cfg(e=e, factor=float(e))  # capacity = group size: nothing can drop
    layer = build.moe(cfg, rngs=nnx.Rngs(1))
    x, mask = random_inputs(2, 13, 16, seed=e)  # each row's 13 tokens in 2 groups of 7
    y, stats = call(layer, x, jnp.asarray(mask))
    y_ref, lb, z = reference(params_of(layer), x.reshape(26, 16), mask.reshape(26))
    np.testing.assert_allclose(np.asarray(y).reshape(26, 16), y_ref, rtol=1e-5, atol=1e-6)
    assert float(stats["dropped_fraction"]) == 0.0
    assert not np.any(np.asarray(y)[~mask])  # padding outputs exactly 0
    np.testing.assert_allclose(stats["load_balance_loss"], lb, rtol=1e-5)
    np.testing.assert_allclose(stats["z_loss"], z, rtol=1e-5)


def test_aux_losses_and_load_match_formulas():
    e, k = 8, 2
    layer = build.moe(small_cfg(e=e, group_size=16), rngs=nnx.Rngs(2))
    x, mask = random_inputs(3, 20, 16, seed=3, pad_frac=0.3)
    _, stats = call(layer, x, jnp.asarray(mask))

    xs = np.asarray(x, np.float64)[mask]  # real tokens only
    logits = xs @ np.asarray(layer.router[...], np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ranked = np.argsort(-probs, axis=1)
    f = np.bincount(ranked[:, 0], minlength=e) / len(xs)
    lb = e * np.sum(f * probs.mean(0))
    lse = np.log(np.exp(logits).sum(1))
    load = np.bincount(ranked[:, :k].ravel(), minlength=e) / (len(xs) * k)

    np.testing.assert_allclose(stats["load_balance_loss"], lb, rtol=1e-5)
    np.testing.assert_allclose(stats["z_loss"], np.mean(lse**2), rtol=1e-5)
    np.testing.assert_allclose(stats["expert_load"], load, rtol=1e-6)
    assert stats["load_balance_loss"].dtype == jnp.float32 and stats["expert_load"].shape == (e,)


def crafted_batch():
    """Two groups of 8 tokens, D = E = 4, router = identity, so x picks the experts.

    Group 0: tokens 0-4 choose (0, then 1); tokens 5-7 choose (1, then 0). Capacity 4.
      Expert 0 first choices: tokens 0-3 kept, token 4 dropped.
      Expert 1 first choices 5, 6, 7 take slots 0-2 BEFORE any second choice, so of the second
      choices only token 0's gets slot 3; tokens 1-4's drop, and all of 5-7's (expert 0 full).
      Token 4 loses both choices. (Token-major slots would instead drop token 7's first choice.)
    Group 1: tokens 0-3 are padding aimed at expert 2; tokens 4-7 choose (2, then 3).
      Padding takes no capacity, so all 8 real assignments fit.
    """
    pairs = [(0, 1)] * 5 + [(1, 0)] * 3 + [(2, 3)] * 8
    x = np.zeros((16, 4), np.float32)
    for t, (a, b) in enumerate(pairs):
        x[t, a], x[t, b] = 3.0, 1.5
    mask = np.ones(16, bool)
    mask[8:12] = False
    kept = {0: [0, 1], 1: [0], 2: [0], 3: [0], 4: [], 5: [0], 6: [0], 7: [0]}
    kept.update({t: [0, 1] for t in range(12, 16)})
    return x, mask, pairs, kept


def test_crafted_routing_drops_second_choices_first():
    cfg = small_cfg(d=4, e=4, group_size=8, factor=1.0)
    layer = build.moe(cfg, rngs=nnx.Rngs(3))
    layer.router.value = jnp.eye(4)
    x, mask, pairs, kept = crafted_batch()
    assert capacity(8, 4, 2, 1.0) == 4
    y, stats = call(layer, jnp.asarray(x).reshape(2, 8, 4), jnp.asarray(mask).reshape(2, 8))
    y = np.asarray(y).reshape(16, 4)

    p = {k: np.asarray(v, np.float64) for k, v in params_of(layer).items()}
    for t, (a, b) in enumerate(pairs):
        if not mask[t]:
            assert not y[t].any()
            continue
        probs = np.exp(x[t] - x[t].max())
        gates = probs[[a, b]] / probs[[a, b]].sum()
        want = np.zeros(4)
        for j in kept[t]:  # a dropped choice contributes 0; the kept gate is not renormalised
            i = (a, b)[j]
            h = x[t] @ p["wi_0"][i]
            want += gates[j] * ((h / (1 + np.exp(-h))) * (x[t] @ p["wi_1"][i])) @ p["wo"][i]
        np.testing.assert_allclose(y[t], want, rtol=1e-5, atol=1e-6, err_msg=f"token {t}")
    assert not y[4].any()  # both choices dropped: output 0, the residual carries the token

    n_real = 2 * mask.sum()
    n_kept = sum(len(kept[t]) for t in range(16) if mask[t])
    assert n_kept == 16
    np.testing.assert_allclose(stats["dropped_fraction"], 1 - n_kept / n_real, rtol=1e-6)  # 1/3
    # Load is counted before dropping: experts 0 and 1 get 8 assignments each, 2 and 3 get 4.
    np.testing.assert_allclose(stats["expert_load"], [1 / 3, 1 / 3, 1 / 6, 1 / 6], rtol=1e-6)

    # Inference (train=False) never drops: every real token gets both its experts, as in the
    # token-by-token reference without capacity.
    y_eval, eval_stats = call(layer, jnp.asarray(x).reshape(2, 8, 4),
                              jnp.asarray(mask).reshape(2, 8), train=False)
    assert float(eval_stats["dropped_fraction"]) == 0.0
    want = reference(params_of(layer), jnp.asarray(x), mask)[0]
    np.testing.assert_allclose(np.asarray(y_eval).reshape(16, 4), np.asarray(want), rtol=1e-5, atol=1e-6)


@nnx.jit
def loss_fn(layer, x, mask, r):
    y, stats = layer(x, mask)
    return jnp.sum(y * r) + stats["load_balance_loss"] + stats["z_loss"]


def test_dropless_matches_capacity_path_and_gradients():
    cfg = small_cfg(e=8, factor=8.0)
    cap_layer = build.moe(cfg, rngs=nnx.Rngs(4))
    cfg.model.moe.mode = "dropless"
    drop_layer = build.moe(cfg, rngs=nnx.Rngs(4))
    x, mask = random_inputs(2, 13, 16, seed=5)
    mask = jnp.asarray(mask)
    r = jax.random.normal(jax.random.key(6), x.shape)

    y_cap, s_cap = call(cap_layer, x, mask)
    y_dl, s_dl = call(drop_layer, x, mask)
    np.testing.assert_allclose(y_dl, y_cap, rtol=1e-5, atol=1e-6)
    assert float(s_cap["dropped_fraction"]) == 0.0 and float(s_dl["dropped_fraction"]) == 0.0
    np.testing.assert_allclose(s_dl["expert_load"], s_cap["expert_load"], rtol=1e-6)

    grad = nnx.jit(nnx.grad(loss_fn, argnums=(0, 1)))
    (g_cap, gx_cap), (g_dl, gx_dl) = grad(cap_layer, x, mask, r), grad(drop_layer, x, mask, r)
    for name in ("router", "wi_0", "wi_1", "wo"):
        a, b = np.asarray(g_cap[name][...]), np.asarray(g_dl[name][...])
        assert np.abs(a).max() > 0, name
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(gx_dl, gx_cap, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["capacity", "dropless"])
def test_gradients_match_reference_loop(mode):
    cfg = small_cfg(d=8, e=4, f=8, group_size=4, factor=4.0, mode=mode)
    layer = build.moe(cfg, rngs=nnx.Rngs(7))
    x, mask = random_inputs(1, 7, 8, seed=8, pad_frac=0.2)
    r = jax.random.normal(jax.random.key(9), x.shape)

    grads = nnx.jit(nnx.grad(loss_fn))(layer, x, jnp.asarray(mask), r)

    def ref_loss(p):
        y, lb, z = reference(p, x.reshape(7, 8), mask.reshape(7))
        return jnp.sum(y * r.reshape(7, 8)) + lb + z

    ref = jax.jit(jax.grad(ref_loss))(params_of(layer))
    for name, want in ref.items():
        got = np.asarray(grads[name][...])
        assert np.abs(got).max() > 0, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)

    # Router gradient against a central finite difference along a random direction.
    v = jax.random.normal(jax.random.key(10), layer.router.shape)
    base = layer.router[...]

    def at(eps):
        layer.router.value = base + eps * v
        return float(loss_fn(layer, x, jnp.asarray(mask), r))

    fd = (at(1e-3) - at(-1e-3)) / 2e-3
    layer.router.value = base
    np.testing.assert_allclose(np.sum(np.asarray(grads["router"][...]) * v), fd, rtol=2e-2)


def test_bfloat16_compute_keeps_router_float32():
    cfg = small_cfg(e=4, factor=4.0)
    layer32 = build.moe(cfg, rngs=nnx.Rngs(11))
    cfg.model.dtype = "bfloat16"
    layer16 = build.moe(cfg, rngs=nnx.Rngs(11))
    x, mask = random_inputs(2, 13, 16, seed=12)
    (y32, s32), (y16, s16) = call(layer32, x, mask), call(layer16, x, mask)
    assert y16.dtype == jnp.bfloat16 and s16["z_loss"].dtype == jnp.float32
    assert float(s16["z_loss"]) == float(s32["z_loss"])  # router saw float32 inputs and weights
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.1, rtol=0.05)


def test_expert_parallel_mesh_matches_single_device():
    """Under a (data=2, expert=2) mesh of 4 CPU devices the sharded layer computes the same."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from tests.models.test_moe import small_cfg, random_inputs, on_mesh
        from tests.models import build
        layer = build.moe(small_cfg(e=4, group_size=8, factor=1.0), rngs=nnx.Rngs(0))
        x, mask = random_inputs(4, 8, 16, seed=1)
        want, want_stats = layer(x, jnp.asarray(mask))
        with jax.set_mesh(on_mesh(layer, (2, 1, 1, 2))):
            f = nnx.jit(lambda l, x, m: l(x, m))
            got, stats = f(layer, x, jnp.asarray(mask))
            hlo = f.lower(layer, x, jnp.asarray(mask)).as_text()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["dropped_fraction"], want_stats["dropped_fraction"])
        assert layer.wi_0[...].sharding.spec[0] == "expert"
        assert "sharding_constraint" in hlo
        print("OK")
    """)
    run_on_cpu_devices(script, 4)


def test_capacity_groups_split_with_the_batch():
    """Rows of 8 tokens with group_size 32: each row is its own group, so under capacity
    pressure the batch equals each row run alone, on one device and under a (data=2, expert=2)
    mesh whose batch shards hold one row each."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from tests.models.test_moe import small_cfg, random_inputs, on_mesh
        from tests.models import build
        layer = build.moe(small_cfg(e=4, group_size=32, factor=0.5), rngs=nnx.Rngs(0))
        x, mask = random_inputs(4, 8, 16, seed=2)
        mask = jnp.asarray(mask)
        parts = [layer(x[i:i + 1], mask[i:i + 1]) for i in range(4)]
        want = jnp.concatenate([y for y, _ in parts])
        assert min(float(s["dropped_fraction"]) for _, s in parts) > 0  # under pressure
        one, one_stats = layer(x, mask)
        np.testing.assert_allclose(one, want, rtol=1e-5, atol=1e-6)
        with jax.set_mesh(on_mesh(layer, (2, 1, 1, 2))):
            got, stats = nnx.jit(lambda l, x, m: l(x, m))(layer, x, mask)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        kept = sum((1 - s["dropped_fraction"]) * 2 * mask[i].sum()
                   for i, (_, s) in enumerate(parts))
        for st in (stats, one_stats):
            np.testing.assert_allclose((1 - st["dropped_fraction"]) * 2 * mask.sum(), kept,
                                       rtol=1e-6)
        print("OK")
    """)
    run_on_cpu_devices(script, 4)


def test_dropless_expert_parallel_matches_single_device_with_gradients():
    """Dropless under an (fsdp=2, expert=4) mesh of CPU devices: the shard_map + all-to-all
    path gives the single-device outputs and gradients, and each device holds only its own
    experts' weights (2 of 8), never all of them; with either grouped matmul (megablox in
    Pallas interpret mode)."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from tests.models.test_moe import small_cfg, random_inputs, loss_fn, on_mesh
        from tests.models import build
        x, mask = random_inputs(8, 12, 16, seed=1)
        mask = jnp.asarray(mask)
        r = jax.random.normal(jax.random.key(2), x.shape)
        grad = nnx.jit(nnx.value_and_grad(loss_fn, argnums=(0, 1)))
        for shape, kernel in (((1, 2, 1, 4), "xla"), ((1, 2, 1, 4), "megablox")):
            layer = build.moe(small_cfg(e=8, mode="dropless", grouped_matmul=kernel),
                              rngs=nnx.Rngs(0))
            want_y, _ = layer(x, mask)
            want_l, (want_g, want_gx) = grad(layer, x, mask, r)
            with jax.set_mesh(on_mesh(layer, shape)):
                f = nnx.jit(lambda l, x, m: l(x, m))
                got_y, _ = f(layer, x, mask)
                hlo = f.lower(layer, x, mask).compile().as_text()
                got_l, (got_g, got_gx) = grad(layer, x, mask, r)
            np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got_l, want_l, rtol=1e-5)
            np.testing.assert_allclose(got_gx, want_gx, rtol=1e-4, atol=1e-6)
            for name in ("router", "wi_0", "wi_1", "wo"):
                np.testing.assert_allclose(got_g[name][...], want_g[name][...], rtol=1e-4,
                                           atol=1e-6, err_msg=name)
            assert "all-to-all" in hlo, shape
            assert "f32[2,16,8]" in hlo and "f32[8,16,8]" not in hlo  # [E / 4, D, F] per device
        print("OK")
    """)
    run_on_cpu_devices(script, 8)


def test_megablox_grouped_matmul_equals_ragged_dot_with_gradients():
    """The dropless layer with JAX's Pallas megablox kernel (interpret mode on CPU) gives
    ragged_dot's outputs and gradients, with padding tokens and an expert that gets no rows
    (whose weight gradient must be exactly 0)."""
    x, mask = random_inputs(2, 13, 16, seed=21, pad_frac=0.3)
    x, mask = jnp.asarray(x).at[..., 0].set(5.0), jnp.asarray(mask)
    r = jax.random.normal(jax.random.key(22), x.shape)
    layers = {k: build.moe(small_cfg(e=8, f=24, mode="dropless", grouped_matmul=k),
                           rngs=nnx.Rngs(23)) for k in ("xla", "megablox")}
    for layer in layers.values():  # expert 7 never wins: its logit is -500 for every token
        layer.router.value = layer.router[...].at[:, 7].set(0.0).at[0, 7].set(-100.0)
    (y_x, s_x), (y_m, s_m) = (call(layers[k], x, mask) for k in ("xla", "megablox"))
    assert float(s_x["expert_load"][7]) == 0.0
    np.testing.assert_allclose(y_m, y_x, rtol=1e-5, atol=1e-6)
    grad = nnx.jit(nnx.value_and_grad(loss_fn, argnums=(0, 1)))
    (l_x, (g_x, gx_x)), (l_m, (g_m, gx_m)) = (grad(layers[k], x, mask, r) for k in ("xla", "megablox"))
    np.testing.assert_allclose(l_m, l_x, rtol=1e-6)
    assert np.all(np.isfinite(gx_m))
    np.testing.assert_allclose(gx_m, gx_x, rtol=1e-4, atol=1e-6)
    for name in ("router", "wi_0", "wi_1", "wo"):
        a, b = np.asarray(g_x[name][...]), np.asarray(g_m[name][...])
        assert np.abs(a).max() > 0, name
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
    assert not np.asarray(g_m["wo"][...])[7].any() and not np.asarray(g_m["wi_0"][...])[7].any()


def test_megablox_without_an_expert_axis_runs_per_device():
    """On an fsdp=4 mesh (no expert split) the megablox layer runs under shard_map, each device
    on its own rows with every expert: the single-device outputs and gradients."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from tests.models.test_moe import small_cfg, random_inputs, loss_fn, on_mesh
        from tests.models import build
        x, mask = random_inputs(4, 12, 16, seed=3)
        mask = jnp.asarray(mask)
        r = jax.random.normal(jax.random.key(4), x.shape)
        grad = nnx.jit(nnx.value_and_grad(loss_fn, argnums=(0, 1)))
        layer = build.moe(small_cfg(e=4, mode="dropless", grouped_matmul="megablox"),
                          rngs=nnx.Rngs(5))
        want_l, (want_g, want_gx) = grad(layer, x, mask, r)
        with jax.set_mesh(on_mesh(layer, (1, 4, 1, 1))):
            got_l, (got_g, got_gx) = grad(layer, x, mask, r)
        np.testing.assert_allclose(got_l, want_l, rtol=1e-5)
        np.testing.assert_allclose(got_gx, want_gx, rtol=1e-4, atol=1e-6)
        for name in ("router", "wi_0", "wi_1", "wo"):
            np.testing.assert_allclose(got_g[name][...], want_g[name][...], rtol=1e-4,
                                       atol=1e-6, err_msg=name)
        print("OK")
    """)
    run_on_cpu_devices(script, 4)


def test_start_up_resolves_the_grouped_matmul_by_platform():
    from mm1_jax.config import ConfigError, validate
    from mm1_jax.startup import resolve_kernels

    def resolved(requested, platform):
        return resolve_kernels(small_cfg(grouped_matmul=requested).model, platform)

    assert resolved("auto", "tpu").grouped_matmul == "megablox"
    assert resolved("auto", "gpu").grouped_matmul == resolved("auto", "cpu").grouped_matmul == "xla"
    cpu = resolved("megablox", "cpu")  # Pallas interpret mode
    assert (cpu.grouped_matmul, cpu.interpret) == ("megablox", True)
    assert not resolved("megablox", "tpu").interpret
    with pytest.raises(ConfigError, match="Pallas TPU kernel"):
        resolved("megablox", "gpu")
    cfg = small_cfg(grouped_matmul="cutlass")
    cfg.model.moe.expert_mlp_dim = None
    with pytest.raises(ConfigError, match="model.moe.grouped_matmul"):
        validate(cfg)
