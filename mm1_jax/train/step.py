"""The one train step, `train_step(state, batch) -> (state, metrics)`, shared by the training loop,
the tests and the benchmarks.

Loss = masked next-token cross-entropy (mean over `loss_mask` tokens of the whole global batch)
+ the model's `moe/aux_loss` (already weighted by its coefficients; 0 for a dense decoder).
With gradient accumulation the batch is cut into `grad_accum` micro-batches whose gradients are
summed; each micro-batch's cross-entropy is divided by the token count of the *whole* batch, so
the result is the same objective as one big batch, not a mean of per-micro-batch means.

The batch is the contract's `Batch` (mm1_jax/data/batch.py, docs/data.md); its per-row
counters (`truncated`, `dropped`) are summed over the global batch into `data/` metrics.

A step refuses its update, leaving parameters and optimiser state as they were (under
`lax.cond`: a refused step computes no update, and its `opt/update_norm` is 0), when the loss or
the gradient norm is not finite or when a row's image placeholders do not match its images
(`data/placeholder_mismatch`: the pipeline and the model disagree on tokens per image, and the
batch would train on misplaced images). The loop stops on the latter at once, naming the step.
Images that `model.image_budget` leaves out (`data/images_over_budget`) are counted, not
refused (mm1_jax/models/mm1.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mm1_jax.data.batch import Batch
from mm1_jax.data.kinds import KIND_IDS
from mm1_jax.sharding import constrain
from mm1_jax.train.optimizer import map_paths
from mm1_jax.train.state import TrainState

MOE_MEANS = ("moe/load_balance_loss", "moe/z_loss", "moe/expert_load", "moe/dropped_fraction")


def _loss(params, batch: Batch, num_loss_tokens: jax.Array, *, recipe, accum: int):
    """(loss, sums) for one micro-batch; every entry of `sums` adds up over micro-batches."""
    frozen = set(recipe.frozen)
    if frozen:  # frozen parameters get no gradient at all (XLA then skips their backward)
        params = map_paths(lambda p, x: jax.lax.stop_gradient(x) if p in frozen else x, params)
    model = nnx.merge(recipe.graphdef, params)
    h, aux = model.features(batch, train=True)
    mask = batch.loss_mask.astype(jnp.float32)
    # The head and cross-entropy fused by `model.loss_chunks` (Decoder.head_loss); ce [b, s]
    # is for the metrics below and carries no gradient.
    ce_loss, ce = model.decoder.head_loss(h, batch.targets, mask / num_loss_tokens)
    aux_loss = aux["moe/aux_loss"].astype(jnp.float32)
    sums = {
        "ce_sum": (ce * mask).sum(),
        "loss/aux": aux_loss / accum,
        "data/placeholder_mismatch": aux["data/placeholder_mismatch"],
        "data/images": batch.image_mask.sum().astype(jnp.int32),
        "data/images_over_budget": aux["data/images_over_budget"],
    }
    for name, i in KIND_IDS.items():
        m = mask * (batch.kinds == i)
        sums[f"ce_sum/{name}"] = (ce * m).sum()
        sums[f"data/{name}_tokens"] = m.sum()
    for key in MOE_MEANS:
        if key in aux:
            sums[key] = aux[key].astype(jnp.float32) / accum
    return ce_loss + aux_loss / accum, sums


def _micro_batches(batch: Batch, accum: int) -> Batch:
    """[B, ...] -> [accum, B / accum, ...]; micro-batch i takes rows i, i + accum, ..., so each
    holds an equal share of every device's rows and no data moves between devices."""

    def split(x):
        x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        return constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Any]]:
    """One optimiser step over a global batch. Call under `jax.set_mesh(mesh)`, jitted with the
    state's shardings (see loop.compile_step); pure otherwise."""
    recipe, accum = state.recipe, state.recipe.grad_accum
    num_loss_tokens = jnp.maximum(batch.loss_mask.astype(jnp.float32).sum(), 1.0)
    grad_fn = jax.value_and_grad(functools.partial(_loss, recipe=recipe, accum=accum), has_aux=True)

    if accum == 1:
        (loss, sums), grads = grad_fn(state.params, batch, num_loss_tokens)
    else:
        def body(carry, micro):
            (l, s), g = grad_fn(state.params, micro, num_loss_tokens)
            return jax.tree.map(jnp.add, carry, (l, s, g)), None

        micro = _micro_batches(batch, accum)
        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
            lambda: grad_fn(state.params, first, num_loss_tokens)))
        (loss, sums, grads), _ = jax.lax.scan(body, (zeros[0][0], zeros[0][1], zeros[1]), micro)

    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (sums["data/placeholder_mismatch"] == 0)

    def update(_):
        updates, opt_state = recipe.tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state, optax.global_norm(updates)

    def refuse(_):
        return state.params, state.opt_state, jnp.zeros((), jnp.float32)

    # A refused step computes no update at all (and a good one pays no select over the state).
    params, opt_state, update_norm = jax.lax.cond(ok, update, refuse, None)
    bad = jnp.where(ok, 0, state.bad_steps + 1)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        bad_steps=bad,
        skipped_steps=state.skipped_steps + (~ok).astype(jnp.int32))

    ce = sums.pop("ce_sum") / num_loss_tokens
    metrics = {
        "loss/total": loss,
        "loss/ce": ce,
        "opt/lr": recipe.schedule(state.step - state.skipped_steps),  # this update's rate
        "opt/grad_norm": grad_norm,
        "opt/update_norm": update_norm,
        "opt/param_norm": optax.global_norm(new_state.params),
        "opt/skipped": (~ok).astype(jnp.int32),
        "opt/skipped_total": new_state.skipped_steps,
        "opt/bad_streak": bad,
        "data/loss_tokens": num_loss_tokens,
        "data/truncated_items": batch.truncated.sum(),
        "data/dropped_items": batch.dropped.sum(),
    }
    for name in KIND_IDS:
        n = sums[f"data/{name}_tokens"]
        metrics[f"loss/{name}"] = sums.pop(f"ce_sum/{name}") / jnp.maximum(n, 1.0)
    metrics.update(sums)
    return new_state, metrics
