"""MM1's optimiser: AdamW at eta(N) with decoupled weight decay 0.1 * eta, warm-up then cosine.

Weight decay. MM1 (section 4) sets the decay to lambda = 0.1 * eta, decoupled from the learning
rate as in AXLearn's `adamw_decoupled_optimizer`: each step subtracts lambda * s(t) * w, where
s(t) = lr(t) / eta is the schedule's multiplier. optax's adamw subtracts lr(t) * wd * w, so
wd = lambda / eta = `optim.weight_decay_ratio` (0.1) gives exactly that.

Weight decay applies to matrices (and higher-rank kernels) only: a parameter whose own rank,
not counting the stacked `layers` axis of scanned blocks, is below 2 (biases, norm gains and
shifts, the CLS embedding, the attention-pool connector's bq/bk/bv/bo) gets none. Deciding by what
a parameter is rather than by its name covers every module, present and future; the models keep
every bias a vector (per-head biases are reshaped where used) so that the rule holds.
`optim.no_decay` adds regexes of further exemptions.

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

from mm1_jax.config import ConfigError

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


def lr_schedule(o: ml_collections.ConfigDict, total: int, peak: float
                ) -> Callable[[jax.Array], jax.Array]:
    """lr(t) for the t-th update (t = 0, 1, ...) under `o` (`cfg.optim`): linear warm-up to
    `peak` over `optim.warmup_steps` updates (the first update already uses peak / warmup_steps,
    not 0), then a half cosine from `peak` to `peak * optim.end_lr_ratio` at update `total`
    (`train.steps`)."""
    warmup, end = o.warmup_steps, peak * o.end_lr_ratio

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        warm = peak * jnp.minimum(1.0, (t + 1.0) / max(warmup, 1))
        progress = jnp.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(t < warmup, warm, cosine)

    return schedule


def decays(names) -> bool:
    """Whether weight decay applies to a parameter with logical axis `names`: matrices and
    higher-rank kernels do, vectors (biases, norm scales) do not. The stacked `layers` axis of
    scanned blocks is not the parameter's own."""
    return sum(n != "layers" for n in names) >= 2


def param_labels(o: ml_collections.ConfigDict, params: Any, names: dict[str, Any]) -> Any:
    """Per-parameter group label under `o` (`cfg.optim`): "frozen", or "m<i>/<decay|no_decay>"
    where i indexes the learning-rate multiplier (0 = default 1.0, i > 0 = `optim.lr_mult[i-1]`).
    `names`: "/"-joined path -> logical axis names (start-up's AbstractModel.names)."""
    freeze = [re.compile(r) for r in o.freeze]
    mults = [(re.compile(r), float(m)) for r, m in o.lr_mult]
    no_decay = [re.compile(r) for r in o.no_decay]

    def label(path: str, x):
        if any(r.search(path) for r in freeze):
            return FROZEN
        group = next((i + 1 for i, (r, _) in enumerate(mults) if r.search(path)), 0)
        if group and mults[group - 1][1] == 0.0:
            return FROZEN
        axes = names.get(path) or (None,) * len(x.shape)
        decay = decays(axes) and not any(r.search(path) for r in no_decay)
        return f"m{group}/{'decay' if decay else 'no_decay'}"

    labels = map_paths(label, params)
    if all(l == FROZEN for l in jax.tree.leaves(labels)):
        raise ConfigError("config.optim.freeze / lr_mult: every parameter is frozen; nothing to train")
    return labels


def make_optimizer(o: ml_collections.ConfigDict, total_steps: int, params: Any,
                   names: dict[str, Any], peak: float
                   ) -> tuple[optax.GradientTransformation, Callable, Any]:
    """(tx, schedule, labels) under `o` (`cfg.optim`) for `params` (a nested dict; arrays or
    ShapeDtypeStructs) with logical axis `names`, peaking at `peak` (start-up's peak_lr)."""
    schedule = lr_schedule(o, total_steps, peak)
    labels = param_labels(o, params, names)
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
