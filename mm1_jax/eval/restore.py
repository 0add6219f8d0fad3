"""A trained model back from its run directory: parameters restored from the newest (or a given)
checkpoint onto the config's mesh, in the shardings training uses (each process reads only its
shards), and the config's evaluators run on it. Used by `python -m mm1_jax.eval` and notebooks.

The checkpoint's own saved config fixes the architecture: fields the evaluating config leaves at
their defaults are taken from it, and one it sets otherwise is a one-line error naming the key
(mm1_jax.convert.init_from.adopt), as is any parameter whose shape still differs."""

from __future__ import annotations

import copy
import os

import jax
import ml_collections
from flax import nnx

from mm1_jax import sharding
from mm1_jax.checkpoint import restore_params
from mm1_jax.config import ConfigError, validate
from mm1_jax.convert.common import SECTIONS
from mm1_jax.convert.init_from import adopt, check_shapes, latest_checkpoint
from mm1_jax.errors import CheckpointError
from mm1_jax.eval import evaluators
from mm1_jax.startup import Run, start


def checkpoint_dir(workdir: str, step: int | None = None) -> str:
    """`<workdir>/checkpoints/<step>` (default the newest complete one); a CheckpointError
    saying what is there otherwise."""
    root = os.path.join(workdir, "checkpoints")
    if step is None:
        found = latest_checkpoint(workdir)
        if found is None:
            raise CheckpointError(f"{root} holds no checkpoint; pass the --workdir a training run "
                                  "wrote (python -m mm1_jax.train --workdir=...)")
        return found
    path = os.path.join(root, str(step))
    if not os.path.isdir(path):
        steps = sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []
        raise CheckpointError(f"no checkpoint {step} in {root} (steps there: {steps})")
    return path


def for_checkpoint(cfg: ml_collections.ConfigDict, step_dir: str) -> ml_collections.ConfigDict:
    """`cfg` with the architecture (and, if unset, the tokenizer) of the run checkpoint
    `step_dir`, and no `init_from`: the parameters come from the checkpoint."""
    if os.path.isdir(os.path.join(step_dir, "config")):
        cfg = adopt(cfg, dict.fromkeys(SECTIONS, step_dir), what=f"the checkpoint {step_dir}")
    else:
        cfg = copy.deepcopy(cfg)
    for component in SECTIONS:
        cfg.init_from[component] = None
    return cfg


def restore_model(cfg: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
                  devices=None) -> tuple[nnx.Module, int, Run]:
    """(model, step, start-up's Run) with `workdir`'s checkpoint `step` (default newest)."""
    try:
        step_dir = checkpoint_dir(workdir, step)
    except CheckpointError:
        validate(cfg)  # a mistake in the config is named first
        raise
    run = start(for_checkpoint(cfg, step_dir), devices=devices, corpus=False)
    shardings = sharding.param_shardings(run.model.params, run.model.names, run.mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            run.model.params, shardings)
    check_shapes(abstract, os.path.join(step_dir, "state"))
    params, step = restore_params(os.path.join(workdir, "checkpoints"), abstract,
                                  int(os.path.basename(step_dir)))
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
                          "mm1_jax.config.evaluator(...) in the experiment, or add one: "
                          "--config.evals.NAME.type=TYPE --config.evals.NAME.FIELD=...)")
    model, step, run = restore_model(cfg, workdir, step=step, devices=devices)
    chosen = [e for e in evaluators.from_config(run.cfg) if not only or e.name in only]
    with jax.set_mesh(run.mesh):
        results = evaluators.run(chosen, model)
    return results, step
