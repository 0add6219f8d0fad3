"""The `--config` of `python -m mm1_jax.train` and `python -m mm1_jax.eval`: an experiment file,
or the config a run saved with its checkpoints, with `--config.key=value` overrides on top.

    --config=experiments/x.py[:arg]   the experiment's get_config()
    (no --config)                     the resolved config saved with the newest checkpoint of
                                      --workdir (or of --checkpoint=STEP): a run is reproducible
                                      from its workdir, and resumes or evaluates as it ran
    --config.train.steps=2000         an override, typed by the config (ml_collections)

Evaluators (`config.evals`) are entries of the same config, and the command line edits them:

    --config.evals.demo=None                        removes the entry `demo`
    --config.evals=None                             removes every entry
    --config.evals.coco.type=captioning \\           adds the entry `coco` (every field of
        --config.evals.coco.annotations=a.json \\    mm1_jax.config.evaluator, at its default,
        --config.evals.coco.images=val2017/         then these overrides)
    --config.evals.demo=None --config.evals.demo.type=perplexity ...   replaces `demo`
"""

from __future__ import annotations

import os
import re
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from mm1_jax.checkpoint import restored_config
from mm1_jax.config import EVAL_TYPES, ConfigError, base_config, evaluator, load_experiment
from mm1_jax.convert.init_from import latest_checkpoint

_NONE = ("None", "none")


def parse(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS, *,
          lock: bool = True) -> list[str]:
    """app.run's `flags_parser`: defines `--config` from the experiment file or the workdir's
    saved config (evaluator entries edited as the module docstring says), then parses `argv`
    into `flag_values`; returns the arguments left."""
    argv = flag_values.read_flags_from_files(argv, force_gnu=False)
    path, argv = _take(argv, "config")
    if path is not None:
        cfg = experiment(path)
    else:
        cfg = saved_config(_peek(argv, "workdir"), _peek(argv, "checkpoint"))
    argv = edit_evals(cfg, argv)
    config_flags.DEFINE_config_dict("config", cfg, flag_values=flag_values, sys_argv=argv,
                                    lock_config=lock)
    return flag_values(argv)


def experiment(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of the experiment file `path[:arg]` (validated later, at start-up)."""
    file = path.partition(":")[0]
    if not os.path.exists(file):
        raise ConfigError(f"--config: {file!r} does not exist; give an experiment file "
                          "(experiments/<x>.py), or leave --config out to use the config saved "
                          "in --workdir")
    return load_experiment(path)


def saved_config(workdir: str | None, step: str | None = None) -> ml_collections.ConfigDict:
    """The resolved config the run in `workdir` saved with its newest checkpoint (or `step`),
    typed as the base config is."""
    newest = latest_checkpoint(workdir) if workdir else None
    if newest is None:
        raise ConfigError(f"--config is required: {workdir or '(no --workdir)'} holds no "
                          "checkpoint whose saved config could be used; a new run names its "
                          "experiment (--config=experiments/<x>.py)")
    root = os.path.dirname(newest)
    step = int(step) if step else int(os.path.basename(newest))
    if not os.path.isdir(os.path.join(root, str(step), "config")):
        raise ConfigError(f"--config is required: {os.path.join(root, str(step))} holds no "
                          "saved config")
    return typed(restored_config(root, step))


def typed(saved: dict) -> ml_collections.ConfigDict:
    """A saved config (plain JSON values) as a ConfigDict typed like `base_config()`: lists
    back to tuples, evaluator entries with every field, so overrides parse as they would on the
    experiment's own config."""
    cfg = base_config()
    _merge(cfg, saved, "")
    return cfg


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _merge(node: ml_collections.ConfigDict, values: dict, path: str) -> None:
    for key, value in values.items():
        if path == "evals":
            node[key] = evaluator(value.get("type"))
            _merge(node[key], value, f"{path}.{key}")
        elif f"{path}.{key}" == "data.mixture":
            node[key] = ml_collections.ConfigDict(value)  # its kinds are the run's, not the base's
        elif key in node and isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
            _merge(node[key], value, f"{path}.{key}".lstrip("."))
        elif isinstance(value, dict):
            node[key] = ml_collections.ConfigDict(value)
        else:
            node[key] = _tuples(value)


def edit_evals(cfg: ml_collections.ConfigDict, argv: list[str]) -> list[str]:
    """Applies the evaluator removals (`--config.evals[.NAME]=None`) of `argv` to `cfg` and
    creates the entries that `--config.evals.NAME.FIELD=...` overrides name but `cfg` lacks;
    returns `argv` without the removals (the field overrides are left to ml_collections)."""
    kept, added = [], {}
    for arg in argv:
        m = re.fullmatch(r"--config\.evals(?:\.(\w+))?=(.*)", arg)
        if m and m.group(2) in _NONE:
            if m.group(1) is None:
                cfg.evals = ml_collections.ConfigDict()
            elif m.group(1) in cfg.evals:
                del cfg.evals[m.group(1)]
            else:
                raise ConfigError(f"{arg}: config.evals has no entry {m.group(1)!r} "
                                  f"(entries: {sorted(cfg.evals)})")
            continue
        kept.append(arg)
        m = re.fullmatch(r"--config\.evals\.(\w+)\.(\w+)=(.*)", arg)
        if m:
            added.setdefault(m.group(1), {})[m.group(2)] = m.group(3)
    for name, fields in added.items():
        if name in cfg.evals:
            continue
        if fields.get("type") not in EVAL_TYPES:
            raise ConfigError(f"config.evals.{name}: a new evaluator needs "
                              f"--config.evals.{name}.type=<one of {tuple(EVAL_TYPES)}> "
                              f"(got {fields.get('type')!r})")
        cfg.evals[name] = evaluator(fields["type"])
    return kept


def _take(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """(value of `--name=V` / `--name V`, argv without it)."""
    for i, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2:]
        m = re.fullmatch(rf"--?{name}=(.*)", arg)
        if m:
            return m.group(1), argv[:i] + argv[i + 1:]
    return None, argv


def _peek(argv: list[str], name: str) -> str | None:
    return _take(argv, name)[0]
