"""`config.init_from`: start a fresh run's components from converted (or earlier runs')
checkpoints, restored straight into the training state's sharding.

Each of `init_from.{vision,connector,decoder}` names a directory holding `state/` (an Orbax
PyTree with `params/<component>`): either what `python -m mm1_jax.convert` writes (with its
`model.json`) or a run's `<workdir>/checkpoints/<step>` (with its `config`). Only
`params/<component>` is read (Orbax partial restore), each shard on its own device; the
optimiser state is untouched (AdamW's moments start at zero whatever the parameters).
"""

from __future__ import annotations

import json
import os

import ml_collections
import orbax.checkpoint as ocp

from mm1_jax.config import ConfigError
from mm1_jax.convert.common import ARCH_FIELDS, SECTIONS


def source_model_config(path: str) -> dict:
    """The `model` config section a checkpoint directory's parameters were made for."""
    meta = os.path.join(path, "model.json")
    if os.path.exists(meta):
        with open(meta) as f:
            return json.load(f)["model"]
    if os.path.isdir(os.path.join(path, "config")):  # a run's <workdir>/checkpoints/<step>
        from mm1_jax.checkpoint import restored_config

        step_dir = os.path.abspath(path)
        return restored_config(os.path.dirname(step_dir), int(os.path.basename(step_dir)))["model"]
    raise ConfigError(f"{path}: neither a converted checkpoint (model.json) nor a run checkpoint "
                      "step directory (config/); see docs/convert.md")


def check_architecture(cfg: ml_collections.ConfigDict, component: str, path: str) -> None:
    """Raises ConfigError listing every architecture field where `cfg` and the checkpoint differ."""
    src = source_model_config(path)
    diffs = []
    for section in SECTIONS[component]:
        ours, theirs = cfg.model[section], src.get(section, {})
        if section == "moe" and not ours.num_experts and not theirs.get("num_experts"):
            continue  # dense on both sides: the routing fields mean nothing
        for field in ARCH_FIELDS[section]:
            a, b = ours.get(field), theirs.get(field)
            if field in theirs and (list(a) if isinstance(a, tuple) else a) != b:
                diffs.append(f"model.{section}.{field}: config {a!r}, checkpoint {b!r}")
    if diffs:
        raise ConfigError(f"config.init_from.{component} ({path}) was made for another "
                          f"architecture: {'; '.join(diffs)}. Set these fields as the checkpoint "
                          "has them, or convert again for this config (python -m mm1_jax.convert "
                          "--help: --image_size, --feature_layer, --vocab_size, ...)")


def restore_component(path: str, abstract_params) -> object:
    """`params/<component>` of the checkpoint at `path`, placed like `abstract_params` (a tree of
    ShapeDtypeStructs with shardings, keyed {component: ...})."""
    target = {"params": abstract_params}
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(os.path.abspath(path), "state"),
        args=ocp.args.PyTreeRestore(item=target,
                                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                    partial_restore=True))
    return restored["params"]


def apply_init_from(cfg: ml_collections.ConfigDict, abstract, state):
    """The freshly initialised `state` with each `cfg.init_from` component's parameters replaced
    by its checkpoint's, in `abstract`'s shardings. Components left None keep their init."""
    chosen = {c: p for c, p in cfg.init_from.items() if p}
    if not chosen:
        return state
    for component, path in chosen.items():
        if not os.path.isdir(os.path.join(path, "state")):
            raise ConfigError(f"config.init_from.{component}: {path!r} has no state/ checkpoint")
        check_architecture(cfg, component, path)
    params = dict(state.params)
    for component, path in chosen.items():
        params[component] = restore_component(path, {component: abstract.params[component]})[component]
    return state.replace(params=params)


def adopt_architecture(cfg: ml_collections.ConfigDict, component: str, path: str) -> None:
    """Sets `cfg`'s architecture fields of `component` to the checkpoint's, for experiment files
    at config-building time (`get_config` reads what it starts from). A path that does not
    exist yet changes nothing: the run's start-up then fails naming `init_from.<component>`."""
    if not os.path.isdir(path):
        return
    src = source_model_config(path)
    for section in SECTIONS[component]:
        theirs = src.get(section, {})
        cfg.model[section].update({f: theirs[f] for f in ARCH_FIELDS[section] if f in theirs})


def latest_checkpoint(workdir: str) -> str | None:
    """`<workdir>/checkpoints/<newest step>` of a finished run, or None if it has none."""
    root = os.path.join(workdir, "checkpoints")
    steps = sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []
    return os.path.join(root, str(steps[-1])) if steps else None
