"""Orbax checkpoints of a run: `<workdir>/checkpoints/<step>/{state,data,config}`.

- state: the TrainState's arrays (params, optimiser state, step, RNG, skip counters), saved
  asynchronously (the step loop continues while files are written) and restored directly into
  the shardings of the *current* mesh, so a checkpoint written on 8 devices restores on 4 or 1.
- data: the Grain iterator's position (grain's own Orbax handler; one file per process).
- config: the resolved config as JSON, for people and for evaluation code.

Training writes and resumes through `Checkpointer`; evaluation and tools read parameters alone
through `restore_params` (no optimiser state is allocated, so the optimiser settings of the
evaluating config need not match the run's).

A checkpoint is written into `<step>.orbax-checkpoint-tmp-*` and renamed into place only when
every item is complete, and `latest_step()` lists renamed directories only, so a save cut off by
SIGKILL or a crash is never restored (and its leftovers are removed at the next start).
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging



def _has_state(iterator: Any) -> bool:
    return hasattr(iterator, "get_state") and hasattr(iterator, "set_state")


class Checkpointer:
    """The run's CheckpointManager: save every `checkpoint.every` steps, keep the newest
    `checkpoint.keep` plus every `checkpoint.keep_period`-th, restore the newest complete one."""

    def __init__(self, directory: str, cfg: ml_collections.ConfigDict):
        c = cfg.checkpoint
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=c.every,
            max_to_keep=c.keep,
            keep_period=c.keep_period or None,
            enable_async_checkpointing=c.async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.every = c.every
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()})
        self.config = json.loads(cfg.to_json_best_effort())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Every `checkpoint.every` steps (Orbax's own policy would also save the first step)."""
        return step % self.every == 0

    def save(self, step: int, state, data_iterator: Any, *, force: bool = False) -> bool:
        """Starts saving `state` (after `step` steps) and the data position; returns at once
        unless `checkpoint.async_save` is off. The iterator must have yielded exactly `step`
        batches."""
        items = {"state": ocp.args.StandardSave(state.arrays()),
                 "config": ocp.args.JsonSave(self.config)}
        if _has_state(data_iterator):
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            logging.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, abstract, data_iterator: Any, step: int | None = None):
        """The newest complete checkpoint (or `step`) placed in `abstract`'s shardings, with the
        data iterator moved to its saved position; None when the directory holds none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        items = {"state": ocp.args.StandardRestore(abstract.arrays())}
        if _has_state(data_iterator):
            data_dir = os.path.join(self.directory, str(step), "data")
            mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
            if os.path.exists(os.path.join(data_dir, mine)):
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            else:
                # No position for this process: no data item, or another process count
                # (one file per process). The model state still restores onto any mesh.
                logging.warning("checkpoint %d has no data-iterator state for %s (found %s); "
                                "the data stream restarts from its beginning", step, mine,
                                sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else [])
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("checkpoint: restored step %d from %s", step, self.directory)
        return abstract.replace(**restored["state"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restored_config(directory: str, step: int) -> dict:
    """The resolved config a checkpoint was written with (a plain dict)."""
    with ocp.CheckpointManager(os.path.abspath(directory),
                               item_handlers={"config": ocp.JsonCheckpointHandler()}) as m:
        return dict(m.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])



def restore_params(directory: str, abstract_params, step: int | None = None):
    """(parameters, step) of the newest complete checkpoint in `directory` (or `step`), placed
    in the shardings `abstract_params` (ShapeDtypeStructs with shardings) carry: each process
    reads only its shards, so no host ever holds the whole model."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} does not exist; pass the --workdir a training run "
                                "wrote (python -m mm1_jax.train --workdir=...)")
    with ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(create=False)) as manager:
        available = sorted(manager.all_steps())
        step = manager.latest_step() if step is None else step
        if step is None or step not in available:
            raise FileNotFoundError(f"no complete checkpoint {'' if step is None else step} in "
                                    f"{directory} (steps there: {available})")
        item = {"params": abstract_params}
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)))
    return restored["state"]["params"], int(step)
