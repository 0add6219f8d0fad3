"""The schedule, eta(N), AdamW with decoupled decay, clipping, freezing and LR multipliers,
against formulas computed independently here (numpy / math)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm1_jax.config import ConfigError, base_config, peak_lr
from mm1_jax.config import CONNECTORS, load_config
from mm1_jax.startup import abstract_model
from mm1_jax.train import optimizer
from mm1_jax.train.optimizer import flatten_paths, lr_schedule, param_labels
from mm1_jax.data.synthetic import SPECIAL


def _cfg(**optim):
    c = base_config()
    c.train.steps = 100
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 10
    c.optim.end_lr_ratio = 0.1
    c.optim.clip_norm = 0.0
    for k, v in optim.items():
        c.optim[k] = v
    return c


def _names(params):
    """Logical names of plain test parameters: no stacked layers, one unnamed axis per dim."""
    return {p: (None,) * x.ndim for p, x in flatten_paths(params).items()}


def make_optimizer(cfg, params):
    return optimizer.make_optimizer(cfg.optim, cfg.train.steps, params, _names(params),
                                    cfg.optim.lr)


def test_schedule_is_linear_warmup_then_cosine():
    cfg = _cfg()
    f = jax.jit(lr_schedule(cfg.optim, cfg.train.steps, 1e-3))
    for t in range(0, 121):
        if t < 10:
            want = 1e-3 * (t + 1) / 10
        else:
            p = min((t - 10) / 90, 1.0)
            want = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * p))
        assert float(f(t)) == pytest.approx(want, rel=1e-6), t
    assert float(f(9)) == pytest.approx(1e-3) and float(f(100)) == pytest.approx(1e-4)


def test_eta_of_n_is_mm1_equation_1():
    # The paper's own number: N = 3e10 gives 2.2e-5 (MM1 section 4).
    assert peak_lr(3e10) == pytest.approx(2.2e-5, rel=0.01)
    cfg = base_config()  # optim.lr unset: eta(N) of the ablation decoder
    stats = abstract_model(cfg, SPECIAL, with_image_flops=False).stats
    assert stats.peak_lr == pytest.approx(math.exp(-0.4214 * math.log(stats.lr_params) - 0.5535))


def _adamw_reference(w, grads, lrs, *, b1, b2, eps, wd, decay):
    """Loshchilov & Hutter AdamW, decay decoupled and scaled by the schedule: numpy, float64."""
    m = np.zeros_like(w); v = np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        w = w - lr * (mhat / (np.sqrt(vhat) + eps) + (wd * w if decay else 0.0))
    return w


def test_adamw_matches_reference_with_decoupled_decay_and_no_decay_group():
    cfg = _cfg()
    rng = np.random.default_rng(0)
    params = {"layer": {"kernel": rng.standard_normal((3, 4)), "bias": rng.standard_normal(4)}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
             for _ in range(3)]
    tx, schedule, labels = make_optimizer(cfg, params)
    assert labels == {"layer": {"kernel": "m0/decay", "bias": "m0/no_decay"}}  # by rank
    state, p = tx.init(params), params
    for g in grads:
        u, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, u)
    lrs = [float(schedule(t)) for t in range(3)]
    for name, decay in (("kernel", True), ("bias", False)):
        want = _adamw_reference(np.float64(params["layer"][name]),
                                [np.float64(g["layer"][name]) for g in grads], lrs,
                                b1=0.9, b2=0.95, eps=1e-8, wd=0.1, decay=decay)
        np.testing.assert_allclose(p["layer"][name], want, rtol=1e-5, atol=1e-7)
    # lambda = 0.1 * eta: with a zero gradient one step shrinks w by exactly lr * 0.1 * w.
    zero = jax.tree.map(jnp.zeros_like, params)
    u, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(u["layer"]["kernel"], -lrs[0] * 0.1 * params["layer"]["kernel"],
                               rtol=1e-6)


def test_global_norm_clipping():
    cfg = _cfg(clip_norm=1.0, weight_decay_ratio=0.0)
    params = {"a": jnp.ones((2,)), "b": jnp.ones((3,))}
    tx, *_ = make_optimizer(cfg, params)
    big = {"a": jnp.full((2,), 30.0), "b": jnp.full((3,), 40.0)}
    # Adam's first step is scale-free; compare second-step updates of clipped vs pre-scaled grads.
    norm = float(np.sqrt(2 * 30.0**2 + 3 * 40.0**2))
    scaled = jax.tree.map(lambda g: g / norm, big)
    s1, s2 = tx.init(params), tx.init(params)
    small = {"a": jnp.full((2,), 0.1), "b": jnp.full((3,), -0.2)}
    _, s1 = tx.update(big, s1, params)
    _, s2 = tx.update(scaled, s2, params)
    u1, _ = tx.update(small, s1, params)
    u2, _ = tx.update(small, s2, params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5), u1, u2)


def test_freeze_and_lr_multiplier():
    cfg = _cfg(freeze=(r"^vision/",), lr_mult=((r"^connector/", 10.0), (r"^decoder/head", 0.0)),
               weight_decay_ratio=0.0)
    params = {"vision": {"w": jnp.ones((4, 4))}, "connector": {"w": jnp.ones((2, 3))},
              "decoder": {"w": jnp.ones((5,)), "head": jnp.ones((6,))}}
    labels = param_labels(cfg.optim, params, _names(params))
    assert labels == {"vision": {"w": "frozen"}, "connector": {"w": "m1/decay"},
                      "decoder": {"w": "m0/no_decay", "head": "frozen"}}
    tx, schedule, _ = make_optimizer(cfg, params)
    state = tx.init(params)
    # Frozen parameters carry no optimiser state: the moments cover connector + decoder/w only.
    moments = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    assert moments == 2 * (6 + 5)
    g = jax.tree.map(lambda x: jnp.full(x.shape, 0.5), params)
    u, _ = tx.update(g, state, params)
    np.testing.assert_array_equal(u["vision"]["w"], 0.0)
    np.testing.assert_array_equal(u["decoder"]["head"], 0.0)
    lr0 = float(schedule(0))
    # First Adam step moves each weight by lr * g / (|g| + eps) ~ lr: the connector's is 10x.
    np.testing.assert_allclose(u["decoder"]["w"], -lr0, rtol=1e-6)
    np.testing.assert_allclose(u["connector"]["w"], -10 * lr0, rtol=1e-6)


def test_everything_frozen_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.freeze"):
        param_labels(_cfg(freeze=(".",)).optim, {"a": jnp.ones(2)}, {})


@pytest.mark.parametrize("kind", CONNECTORS)
def test_weight_decay_by_what_a_parameter_is_over_every_connector(kind):
    """Every parameter of the demo-sized model with each connector: kernels and embeddings
    decay, every bias, norm gain and shift does not (the attention-pool connector's
    bq/bk/bv/bo included, which a name rule `(bias|scale)$` missed). Scanned parameters carry
    a leading `layers` axis that is not their own."""
    cfg = load_config("experiments/demo_cpu.py")
    cfg.model.connector.kind = kind
    cfg.model.connector.num_tokens = 16
    cfg.optim.freeze = ()  # the demo freezes its encoder; here every parameter gets a group
    model = abstract_model(cfg, SPECIAL, with_image_flops=False)
    labels = flatten_paths(param_labels(cfg.optim, model.params, model.names))
    shapes = {p: x.shape for p, x in flatten_paths(model.params).items()}
    vector = ("bias", "scale", "bq", "bk", "bv", "bo", "cls")
    for path, label in labels.items():
        leaf = path.rsplit("/", 1)[-1]
        stacked = "layers" in model.names[path]
        own_rank = len(shapes[path]) - stacked
        if leaf in vector:
            assert own_rank == 1 and label.endswith("no_decay"), (path, shapes[path], label)
        else:
            assert own_rank >= 2 and label.endswith("/decay"), (path, shapes[path], label)
    if kind == "attn_pool":
        assert {p for p in labels if p.rsplit("/", 1)[-1] in ("bq", "bk", "bv", "bo")}
