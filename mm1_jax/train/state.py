"""The training state and its creation directly in its sharded layout.

MaxText style: the model is first built abstractly (`nnx.eval_shape`, no memory; once, at
start-up: mm1_jax.startup), the shardings of
every parameter and optimiser-state leaf are derived from the parameters' logical axis names and
the rules table, and a jitted init with those `out_shardings` materialises each shard on its
device. Nothing of full size ever lives on one device.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from mm1_jax import sharding
from mm1_jax.startup import Run, build_model
from mm1_jax.train.optimizer import FROZEN, flatten_paths, make_optimizer


@dataclasses.dataclass(frozen=True)
class StepRecipe:
    """What the train step needs besides arrays; static (hashed into the compiled step)."""

    graphdef: Any  # nnx GraphDef of the model
    tx: optax.GradientTransformation
    schedule: Callable[[jax.Array], jax.Array]  # lr(t), for logging
    frozen: tuple[str, ...]  # "/"-joined paths of frozen parameters (no gradient computed)
    grad_accum: int


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: steps taken, skipped ones included (= batches consumed)
    params: Any  # nested dict (nnx pure dict) of float32 parameters
    opt_state: Any
    # uint32 [2] raw key, checkpointed with the run. MM1 pre-training has no dropout, so nothing
    # draws from it yet; a stochastic layer would use fold_in(rng, step).
    rng: jax.Array
    bad_steps: jax.Array  # int32 []: consecutive non-finite steps, 0 after a good one
    skipped_steps: jax.Array  # int32 []: all skipped steps
    recipe: StepRecipe = flax.struct.field(pytree_node=False)

    def arrays(self) -> dict[str, Any]:
        """The checkpointed part: every field except the static recipe."""
        return {k: getattr(self, k) for k in
                ("step", "params", "opt_state", "rng", "bad_steps", "skipped_steps")}


def state_shardings(abstract: TrainState, names: dict[str, Any], mesh: Mesh) -> TrainState:
    """NamedSharding for every array of `abstract`.

    Parameters follow their logical names through the rules table; an optimiser-state leaf whose
    trailing dict keys spell a parameter's path and whose shape matches (Adam's mu and nu) takes
    that parameter's sharding; everything else (counts, scalars) is replicated.
    """
    params = flatten_paths(sharding.param_shardings(abstract.params, names, mesh))
    shapes = {p: x.shape for p, x in flatten_paths(abstract.params).items()}

    def for_leaf(path, x):
        keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        for i in range(len(keys)):
            p = "/".join(keys[i:])
            if p in params and shapes[p] == x.shape:
                return params[p]
        return sharding.replicated(mesh)

    return jax.tree_util.tree_map_with_path(for_leaf, abstract)


def abstract_train_state(run: Run) -> tuple[TrainState, TrainState]:
    """(abstract state of ShapeDtypeStructs carrying shardings, shardings) on `run.mesh`;
    allocates nothing."""
    cfg, model = run.cfg, run.model
    tx, schedule, labels = make_optimizer(cfg.optim, cfg.train.steps, model.params, model.names,
                                          run.peak_lr)
    frozen = tuple(p for p, l in flatten_paths(labels).items() if l == FROZEN)
    recipe = StepRecipe(graphdef=model.graphdef, tx=tx, schedule=schedule, frozen=frozen,
                        grad_accum=cfg.train.grad_accum)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    abstract = TrainState(step=scalar, params=model.params,
                          opt_state=jax.eval_shape(tx.init, model.params),
                          rng=jax.ShapeDtypeStruct((2,), jnp.uint32), bad_steps=scalar,
                          skipped_steps=scalar, recipe=recipe)
    shardings = state_shardings(abstract, model.names, run.mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, shardings)
    return abstract, shardings


def init_train_state(run: Run, abstract: TrainState, shardings: TrainState) -> TrainState:
    """Initialises the arrays of `abstract` (same recipe object) directly in `shardings`."""
    cfg = run.cfg

    def init():
        model = build_model(cfg.model, run.special, cfg.seed, run.kernels)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return abstract.replace(
            step=jnp.zeros((), jnp.int32), params=params,
            opt_state=abstract.recipe.tx.init(params),
            rng=jax.random.key_data(jax.random.key(cfg.seed + 1)),
            bad_steps=jnp.zeros((), jnp.int32), skipped_steps=jnp.zeros((), jnp.int32))

    with jax.set_mesh(run.mesh):
        return jax.jit(init, out_shardings=shardings)()

