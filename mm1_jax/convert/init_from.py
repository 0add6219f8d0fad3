"""`config.init_from`: start a fresh run's components from converted (or earlier runs')
checkpoints, restored straight into the training state's sharding, with their architecture.

Each of `init_from.{vision,connector,decoder}` names a directory holding `state/` (an Orbax
PyTree with `params/<component>`): either what `python -m mm1_jax.convert` writes (with its
`model.json`) or a run's `<workdir>/checkpoints/<step>` (with its `config`). Only
`params/<component>` is read (Orbax partial restore), each shard on its own device; the
optimiser state is untouched (AdamW's moments start at zero whatever the parameters).

The architecture travels with the checkpoint: before start-up, `resolve_architecture` gives the
run the architecture fields of what it starts from (the checkpoints of `init_from`, or the
run's own newest checkpoint when it resumes), wherever the config leaves them at their
defaults, and the decoder's tokenizer when `data.tokenizer` is unset; a field the config sets
to another value is a ConfigError listing, for every component at once, the flags that take
the checkpoints' values. The trainer saves that resolved config with every checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from mm1_jax.config import ConfigError, base_config
from mm1_jax.convert.common import ARCH_FIELDS, SECTIONS
from mm1_jax.convert.export import flat
from mm1_jax.errors import CheckpointError


def _source(path: str) -> dict:
    """What a checkpoint directory says it holds: {"model": the `model` config section its
    parameters were made for, "tokenizer": the tokenizer it was made with (a path, or None),
    "what": where that is written}."""
    meta = os.path.join(path, "model.json")
    if os.path.exists(meta):
        with open(meta) as f:
            m = json.load(f)
        tok = m.get("tokenizer")
        return {"model": m["model"], "tokenizer": tok and os.path.join(path, tok),
                "what": f"{path} (model.json, converted from {m.get('architecture', '?')})"}
    if os.path.isdir(os.path.join(path, "config")):  # a run's <workdir>/checkpoints/<step>
        from mm1_jax.checkpoint import restored_config

        step_dir = os.path.abspath(path)
        c = restored_config(os.path.dirname(step_dir), int(os.path.basename(step_dir)))
        return {"model": c["model"], "tokenizer": c.get("data", {}).get("tokenizer"),
                "what": f"{path} (the run's saved config)"}
    raise ConfigError(f"{path}: neither a converted checkpoint (model.json) nor a run checkpoint "
                      "step directory (config/); see docs/convert.md")


def source_model_config(path: str) -> dict:
    """The `model` config section a checkpoint directory's parameters were made for."""
    return _source(path)["model"]


def source_tokenizer(path: str) -> str | None:
    """The tokenizer a checkpoint directory was made with: a converted decoder's `tokenizer/`,
    or a run's `data.tokenizer`; None if it names none."""
    return _source(path)["tokenizer"]


def _normalised(section: str, field: str, model: dict):
    """A field's value with None defaults spelled out (real_vocab_size None = vocab_size,
    expert_mlp_dim None = the dense mlp_dim), so equal meanings compare equal."""
    value = model.get(section, {}).get(field)
    if value is None and (section, field) == ("decoder", "real_vocab_size"):
        value = model.get("decoder", {}).get("vocab_size")
    if value is None and (section, field) == ("moe", "expert_mlp_dim"):
        value = model.get("decoder", {}).get("mlp_dim")
    return list(value) if isinstance(value, tuple) else value


def architecture_differences(model: dict, component: str, src: dict) -> list[tuple[str, str, Any, Any]]:
    """(section, field, ours, the checkpoint's) for every architecture field of `component`
    where `model` (a `config.model` dict) and the checkpoint's `src` model section differ."""
    diffs = []
    for section in SECTIONS[component]:
        theirs = src.get(section, {})
        if section == "moe" and not model["moe"]["num_experts"] and not theirs.get("num_experts"):
            continue  # dense on both sides: the routing fields mean nothing
        for field in ARCH_FIELDS[section]:
            a, b = _normalised(section, field, model), _normalised(section, field, src)
            if field in theirs and a != b:
                diffs.append((section, field, a, b))
    return diffs


def check_architecture(cfg: ml_collections.ConfigDict, component: str, path: str) -> None:
    """Raises ConfigError listing every architecture field where `cfg` and the checkpoint differ."""
    diffs = [f"model.{s}.{f}: config {a!r}, checkpoint {b!r}"
             for s, f, a, b in architecture_differences(cfg.model.to_dict(), component,
                                                        source_model_config(path))]
    if diffs:
        raise ConfigError(f"config.init_from.{component} ({path}) was made for another "
                          f"architecture: {'; '.join(diffs)}. Set these fields as the checkpoint "
                          "has them, or convert again for this config (python -m mm1_jax.convert "
                          "--help: --image_size, --feature_layer, --vocab_size, ...)")


def adopt(cfg: ml_collections.ConfigDict, sources: dict[str, str], *, what: str
          ) -> ml_collections.ConfigDict:
    """A copy of `cfg` whose architecture is that of the checkpoints it starts from (`sources`:
    component -> checkpoint directory; `what` says what they are, for messages): every
    architecture field left at the base config's default takes the checkpoint's value, and
    `data.tokenizer`, if unset, the decoder's tokenizer. A field set to another value
    contradicts the checkpoint: all such fields, of every component, make one ConfigError that
    lists the `--config.x=y` flags taking the checkpoints' values."""
    out, defaults = copy.deepcopy(cfg), base_config().model.to_dict()
    ours, adopted, conflicts, flags = cfg.model.to_dict(), [], [], []
    for component, path in sources.items():
        src = _source(path)
        for section, field, a, b in architecture_differences(ours, component, src["model"]):
            key = f"model.{section}.{field}"
            if a == _normalised(section, field, defaults):
                with out.unlocked():
                    out.model[section][field] = src["model"][section][field]
                adopted.append(f"{key}={b!r}")
            else:
                conflicts.append(f"{key} is {a!r}, {src['what']} has {b!r}")
                flags.append(f"--config.{key}={b}")
        if component == "decoder" and not out.data.tokenizer and src["tokenizer"]:
            with out.unlocked():
                out.data.tokenizer = src["tokenizer"]
            adopted.append(f"data.tokenizer={src['tokenizer']!r}")
    if conflicts:
        raise ConfigError(
            f"the config contradicts {what}: {'; '.join(conflicts)}. To take the checkpoints' "
            f"architecture, pass {' '.join(flags)} (or leave these fields unset in the "
            "experiment); to keep yours, convert again for it (python -m mm1_jax.convert --help)")
    if adopted:
        logging.info("architecture from %s: %s", what, ", ".join(adopted))
    return out


def resolve_architecture(cfg: ml_collections.ConfigDict, workdir: str | None = None
                         ) -> ml_collections.ConfigDict:
    """`cfg` with the architecture of what the run starts from (`adopt`): its own newest
    checkpoint in `workdir` when there is one (a resumed run is what it was), else the
    checkpoints of `init_from` (a fresh run from converted or earlier checkpoints)."""
    own = latest_checkpoint(workdir) if workdir else None
    if own is not None and os.path.isdir(os.path.join(own, "config")):
        return adopt(cfg, dict.fromkeys(SECTIONS, own), what=f"the run's checkpoint {own}")
    chosen = {c: cfg.init_from[c] for c in SECTIONS if cfg.init_from.get(c)}
    for component, path in chosen.items():
        _check_state(component, path)
    return adopt(cfg, chosen, what="the checkpoints of config.init_from")


def _check_state(component: str, path: str) -> None:
    if not os.path.isdir(os.path.join(path, "state")):
        raise ConfigError(f"config.init_from.{component}: {path!r} has no state/ checkpoint")


def check_shapes(abstract_params: dict, state_dir: str) -> None:
    """Every parameter of `abstract_params` ({component: tree}) that the checkpoint at
    `state_dir` holds has its shape there; else one CheckpointError naming the first that
    differs and the config sections that set it."""
    tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata.tree["params"]
    stored = {p: m.shape for p, m in flat(tree).items()}
    wanted = flat(abstract_params)
    for path, x in sorted(wanted.items()):
        if path in stored and tuple(stored[path]) != tuple(x.shape):
            sections = ", ".join(f"model.{s}" for s in SECTIONS[path.split("/")[0]])
            raise CheckpointError(
                f"{state_dir}: params/{path} is {list(stored[path])} there and "
                f"{list(x.shape)} in this config; the config's {sections} differ from the "
                "checkpoint's (leave them unset to take the checkpoint's)")


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
    by its checkpoint's, in `abstract`'s shardings. Components left None keep their init. The
    log says what came from where."""
    chosen = {c: p for c, p in cfg.init_from.items() if p}
    if not chosen:
        return state
    for component, path in chosen.items():
        _check_state(component, path)
        check_architecture(cfg, component, path)
        check_shapes({component: abstract.params[component]}, os.path.join(os.path.abspath(path), "state"))
    params = dict(state.params)
    for component, path in chosen.items():
        params[component] = restore_component(path, {component: abstract.params[component]})[component]
        logging.info("init_from.%s: %s", component, _loaded(cfg, component, path, params[component]))
    return state.replace(params=params)


def _loaded(cfg: ml_collections.ConfigDict, component: str, path: str, params) -> str:
    """One line on what `init_from.<component>` loaded: parameters, dtype, source, vocabulary."""
    leaves = jax.tree.leaves(params)
    dtypes = sorted({str(x.dtype) for x in leaves})
    line = (f"{sum(x.size for x in leaves):,} parameters in {len(leaves)} arrays "
            f"({'/'.join(dtypes)}) from {_source(path)['what']}")
    if component == "decoder":
        d = cfg.model.decoder
        line += (f"; vocabulary {d.real_vocab_size or d.vocab_size} tokens in {d.vocab_size} rows"
                 f", tokenizer {cfg.data.tokenizer or 'none (synthetic batches)'}")
    return line


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
