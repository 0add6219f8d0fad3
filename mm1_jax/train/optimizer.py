"""MM1's optimiser: AdamW at eta(N) with decoupled weight decay 0.1 * eta, warm-up then cosine.

Weight decay. MM1 (section 3.4) sets the decay to lambda = 0.1 * eta, decoupled from the learning
rate as in AXLearn's `adamw_decoupled_optimizer`: each step subtracts lambda * s(t) * w, where
s(t) = lr(t) / eta is the schedule's multiplier. optax's adamw subtracts lr(t) * wd * w, so
wd = lambda / eta = `optim.weight_decay_ratio` (0.1) gives exactly that.

Parameter groups are regexes over "/"-joined parameter paths ("vision/blocks/q/kernel"):
`optim.freeze` and multipliers of 0 freeze a group (no update and no optimiser state, through
optax.multi_transform + set_to_zero); `optim.lr_mult` scales a group's learning rate (the first
matching regex wins). Gradient clipping is global over the trainable parameters.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mm1_jax.config import ConfigError, peak_lr

FROZEN = "frozen"


def flatten_paths(tree: Any) -> dict[str, Any]:
    """{"a/b/c": leaf} for a nested dict of parameters (integer keys become digits)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = leaf
    return out


def map_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """tree_map whose function also receives the leaf's "/"-joined path."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: fn("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), x),
        tree)


def peak_learning_rate(cfg: ml_collections.ConfigDict) -> float:
    """`optim.lr` if set, else MM1's eta(N) (eq. 1) with N = the decoder's non-embedding
    parameters, MoE layers counted as their dense backbone (mm1_jax.inspect, `lr_params`)."""
    if cfg.optim.lr is not None:
        return float(cfg.optim.lr)
    from mm1_jax.inspect import model_stats

    return peak_lr(model_stats(cfg, with_flops=False)["lr_params"])


def lr_schedule(cfg: ml_collections.ConfigDict, peak: float) -> Callable[[jax.Array], jax.Array]:
    """lr(t) for the t-th update (t = 0, 1, ...): linear warm-up to `peak` over
    `optim.warmup_steps` updates (the first update already uses peak / warmup_steps, not 0), then
    a half cosine from `peak` to `peak * optim.end_lr_ratio` at update `train.steps`."""
    warmup, total, end = cfg.optim.warmup_steps, cfg.train.steps, peak * cfg.optim.end_lr_ratio

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = peak * jnp.minimum(1.0, (t + 1.0) / max(warmup, 1))
        progress = jnp.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(t < warmup, warm, cosine)

    return schedule


def param_labels(cfg: ml_collections.ConfigDict, params: Any) -> Any:
    """Per-parameter group label: "frozen", or "m<i>/<decay|no_decay>" where i indexes the
    learning-rate multiplier (0 = default 1.0, i > 0 = `optim.lr_mult[i-1]`)."""
    o = cfg.optim
    freeze = [re.compile(r) for r in o.freeze]
    mults = [(re.compile(r), float(m)) for r, m in o.lr_mult]
    no_decay = [re.compile(r) for r in o.no_decay]

    def label(path: str, _):
        if any(r.search(path) for r in freeze):
            return FROZEN
        group = next((i + 1 for i, (r, _) in enumerate(mults) if r.search(path)), 0)
        if group and mults[group - 1][1] == 0.0:
            return FROZEN
        decay = "no_decay" if any(r.search(path) for r in no_decay) else "decay"
        return f"m{group}/{decay}"

    labels = map_paths(label, params)
    if all(l == FROZEN for l in jax.tree.leaves(labels)):
        raise ConfigError("config.optim.freeze / lr_mult: every parameter is frozen; nothing to train")
    return labels


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any
                   ) -> tuple[optax.GradientTransformation, Callable, Any]:
    """(tx, schedule, labels) for `params` (a nested dict; arrays or ShapeDtypeStructs)."""
    o = cfg.optim
    peak = peak_learning_rate(cfg)
    schedule = lr_schedule(cfg, peak)
    labels = param_labels(cfg, params)
    used = set(jax.tree.leaves(labels))
    mult = [1.0] + [float(m) for _, m in o.lr_mult]

    def adamw(m: float, decay: bool) -> optax.GradientTransformation:
        return optax.adamw(lambda t: schedule(t) * m, b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay_ratio if decay else 0.0)

    groups = {FROZEN: optax.set_to_zero()}
    for i, m in enumerate(mult):
        for decay in (True, False):
            name = f"m{i}/{'decay' if decay else 'no_decay'}"
            if name in used:
                groups[name] = adamw(m, decay)
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm) if o.clip_norm else optax.identity(),
                     optax.multi_transform(groups, labels))
    return tx, schedule, labels
