"""Run in a subprocess with 8 simulated CPU devices (tests/models/test_mm1.py): the image budget
on a data=2 x fsdp=4 mesh (8 batch shards of 2 rows) against every slot encoded on one device.
Prints one JSON line of what it measured."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mm1_jax.config import load_config
from mm1_jax.models import mm1
from mm1_jax.startup import start
from mm1_jax.train.loop import global_batch
from mm1_jax.data.synthetic import SPECIAL, make_global_batch
from tests.helpers import create_train_state

RTOL, ATOL = 1e-5, 1e-7
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


def config(budget, shape):
    cfg = load_config("experiments/demo_cpu.py")
    cfg.evals, cfg.data.tokenizer = {}, None  # synthetic batches
    cfg.train.batch_size, cfg.mesh.shape, cfg.model.image_budget = 16, shape, budget
    return cfg


def loss_and_grads(budget, shape, devices, batch):
    """(loss, images over budget, gradients, u8 collectives in the compiled program)."""
    run = start(config(budget, shape), devices=devices, special=SPECIAL, corpus=False)
    state, _ = create_train_state(run)

    def loss_fn(params, b):
        logits, aux = nnx.merge(state.recipe.graphdef, params)(b)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), b.targets)
        return (ce * b.loss_mask).sum() / b.loss_mask.sum(), aux["data/images_over_budget"]

    with jax.set_mesh(run.mesh):
        b = global_batch(batch, run.mesh)
        compiled = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(state.params, b).compile()
        (loss, over), grads = compiled(state.params, b)
    # Collectives moving uint8 values: images travelling between chips.
    moved = [line.strip()[:160] for line in compiled.as_text().splitlines()
             if any(f" {c}(" in line or f" {c}-start(" in line for c in COLLECTIVES)
             and "= u8[" in line]
    return float(loss), int(over), [np.asarray(g) for g in jax.tree.leaves(jax.device_get(grads))], moved


def main():
    devices = jax.devices()
    assert len(devices) == 8, devices
    batch = make_global_batch(config(None, (1, 1, 1, 1)), 0, 0)
    mesh8 = (2, 4, 1, 1)
    out = {"per_group": batch.image_mask.reshape(8, -1).sum(1).tolist(),
           "slots_per_group": batch.image_mask[:2].size}
    fits = max(out["per_group"]) / out["slots_per_group"]
    tight = (max(out["per_group"]) - 2) / out["slots_per_group"]
    out["budgets"] = {"fits": fits, "tight": tight}
    runs = {"one_every_slot": (None, (1, 1, 1, 1), devices[:1]),
            "eight_fits": (fits, mesh8, devices),
            "eight_tight": (tight, mesh8, devices)}
    for name, (budget, shape, devs) in runs.items():
        loss, over, grads, moved = loss_and_grads(budget, shape, devs, batch)
        if name == "one_every_slot":
            ref = grads
        # Every gradient element against one device's, in units of the test's tolerance
        # |g - g_ref| <= RTOL |g_ref| + ATOL (<= 1: within it).
        err = max(float((np.abs(g - r) / (RTOL * np.abs(r) + ATOL)).max()) for g, r in zip(grads, ref))
        out[name] = {"loss": loss, "over": over, "grad_err": err, "moved": moved,
                     "grad_elements": sum(g.size for g in grads)}
    # The detector sees images move: the same budget gathered over the whole batch at once.
    mm1.batch_shards = lambda rows: 1
    out["eight_global_gather_moved"] = loss_and_grads(fits, mesh8, devices, batch)[3]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
