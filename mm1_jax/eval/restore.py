"""A trained model back from its run directory: parameters restored from the newest (or a given)
checkpoint onto the config's mesh, in the shardings training uses (each process reads only its
shards), and the config's evaluators run on it. Used by `python -m mm1_jax.eval` and notebooks."""

from __future__ import annotations

import os

import jax
import ml_collections
from flax import nnx

from mm1_jax import sharding
from mm1_jax.checkpoint import restore_params
from mm1_jax.config import ConfigError
from mm1_jax.eval import evaluators
from mm1_jax.startup import Run, start


def restore_model(cfg: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
                  devices=None) -> tuple[nnx.Module, int, Run]:
    """(model, step, start-up's Run) with `workdir`'s checkpoint `step` (default newest)."""
    run = start(cfg, devices=devices, corpus=False)
    shardings = sharding.param_shardings(run.model.params, run.model.names, run.mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            run.model.params, shardings)
    params, step = restore_params(os.path.join(workdir, "checkpoints"), abstract, step)
    return nnx.merge(run.model.graphdef, params), step, run


def evaluate_checkpoint(cfg, workdir: str, *, step: int | None = None, only=(), devices=None
                        ) -> tuple[dict[str, float], int]:
    """(results, step): the evaluators of `cfg.evals` (or those in `only`) on the parameters of
    `workdir`'s checkpoint `step` (default newest), restored sharded on the config's mesh."""
    unknown = sorted(set(only) - set(cfg.evals))
    if unknown:
        raise ConfigError(f"--only: {unknown} are not entries of config.evals "
                          f"({sorted(cfg.evals)})")
    if not cfg.evals:
        raise ConfigError("config.evals is empty: nothing to evaluate (declare evaluators with "
                          "mm1_jax.config.evaluator(...) in the experiment)")
    model, step, run = restore_model(cfg, workdir, step=step, devices=devices)
    chosen = [e for e in evaluators.from_config(run.cfg) if not only or e.name in only]
    with jax.set_mesh(run.mesh):
        results = evaluators.run(chosen, model)
    return results, step
