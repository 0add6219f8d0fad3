"""The training loop: the side effects around the pure `train_step`.

Start-up (mm1_jax.startup.start) runs first, so that every config mistake surfaces before
anything compiles: validation, the checks against files and devices, the tokenizer's special
ids, the mesh, the abstract model and its statistics. Then the newest complete checkpoint is
restored (or the state initialised), the evaluators of `config.evals` are built, and the step
is compiled.

Each iteration dispatches step t and only then reads the metrics of step t - 1, so the host never
stalls the device. A step that must not count (non-finite loss or gradient, or a batch whose image
placeholders disagree with its images) refuses its own update inside the step, so reading its
metrics one step late changes nothing; before a checkpoint is written the pending metrics are
read, so a batch that stops the run never reaches a checkpoint. Images that `model.image_budget`
leaves out do not stop the run: they are counted (`data/images_over_budget`) and warned about
when a log window loses more than `OVER_BUDGET_WARN` of its images.

perf/mfu counts the encoder's FLOPs for real images only (`metrics.model_flops_per_step`): empty
slots the encoder computes are not counted as work, and a budget that skips them shows as a
shorter step, hence a higher MFU.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from mm1_jax import sharding
from mm1_jax.checkpoint import Checkpointer
from mm1_jax.data.kinds import KINDS
from mm1_jax.convert.init_from import apply_init_from
from mm1_jax.data.tokenizer import SpecialIds
from mm1_jax.eval import evaluators as eval_lib
from mm1_jax.startup import Run, start
from mm1_jax.train.metrics import Progress, encoded_images, model_flops_per_step, peak_flops
from mm1_jax.train.state import TrainState, abstract_train_state, init_train_state
from mm1_jax.train.step import train_step
from mm1_jax.writer import MetricsWriter

# Per-row counters of the data pipeline: host-side statistics, not model inputs; they never
# travel to the device.
HOST_COUNTERS = {"truncated": "data/truncated_items", "dropped": "data/dropped_items"}
# A log window that leaves out more than this share of its images over `model.image_budget`
# warns. A budget sized for the run's rows per chip leaves out ~0.01-0.04% (BENCHMARKS.md); the
# count is logged in `data/images_over_budget` either way.
OVER_BUDGET_WARN = 1e-3


class _LibraryInfoFilter(logging.logging.Filter):
    """Drops INFO lines of Orbax and Grain (dozens per checkpoint); warnings still show."""

    def filter(self, record):
        noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain"))
        return record.levelno >= logging.logging.WARNING or not noisy


def quiet_library_logs() -> None:
    """For the command-line entry points (train, demo): keep the console to the run's own lines."""
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())


class TrainingError(RuntimeError):
    """The run cannot continue (diverged, or the data disagrees with the model); says at which step."""


@dataclasses.dataclass
class RunResult:
    step: int  # steps completed
    preempted: bool  # stopped by SIGTERM/SIGINT after saving
    last_metrics: dict[str, Any]
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the last evaluation


def compile_step(abstract: TrainState, shardings: TrainState, mesh, batch: dict[str, Any],
                 compiler_options: dict[str, Any] | None = None):
    """The jitted, sharded `train_step` for batches shaped like `batch` (arrays or structs); the
    input state is donated. Returns (compiled, seconds spent compiling). `compiler_options`:
    XLA flags for this compile only (`aot.NO_COLLECTIVE_MATMULS`)."""
    batch_sh = {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}
    jitted = jax.jit(train_step, in_shardings=(shardings, batch_sh),
                     out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    t = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jitted.lower(abstract, {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                           for k, v in batch.items()}).compile(compiler_options)
    return compiled, time.perf_counter() - t


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the data-parallel axes."""
    return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim), v)
            for k, v in local.items()}


def _host_sum(counts: dict[str, int]) -> dict[str, int]:
    """Sums host-side counters over processes (only at log time: a tiny collective)."""
    if jax.process_count() == 1 or not counts:
        return counts
    from jax.experimental import multihost_utils

    keys = sorted(counts)
    total = multihost_utils.process_allgather(np.array([counts[k] for k in keys], np.int64))
    return dict(zip(keys, np.asarray(total).reshape(-1, len(keys)).sum(0).tolist()))


class _StopSignal:
    """SIGTERM / SIGINT set a flag; the loop saves at the next step boundary and returns.
    A second SIGINT kills as usual. Single-process only: with several processes every one must
    stop at the same step, which JAX's pre-emption service (started by jax.distributed and
    listening for SIGTERM itself) arranges through `CheckpointManager.reached_preemption`."""

    def __init__(self, enabled: bool):
        self.received = None
        self.enabled = enabled
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT) if self.enabled else ():
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check(step: int, metrics: dict[str, Any], max_bad: int) -> None:
    if metrics["data/placeholder_mismatch"]:
        raise TrainingError(
            f"step {step}: {int(metrics['data/placeholder_mismatch'])} rows of the batch have a "
            "number of image placeholder tokens that differs from image_mask.sum() x "
            "model.connector.num_tokens; the data pipeline and the model disagree on "
            "tokens per image (data.* vs model.connector.num_tokens, or the tokenizer's <image> "
            "id); the step's update was refused and nothing of this batch was applied or saved")
    if metrics["opt/skipped"]:
        logging.warning("step %d: non-finite loss (%s) or gradient norm (%s); update skipped "
                        "(%d in a row)", step, metrics["loss/total"], metrics["opt/grad_norm"],
                        metrics["opt/bad_streak"])
    if metrics["opt/bad_streak"] >= max_bad:
        raise TrainingError(
            f"step {step}: {int(metrics['opt/bad_streak'])} consecutive steps had a non-finite loss "
            f"or gradient (last loss {metrics['loss/total']}, grad norm {metrics['opt/grad_norm']}); "
            f"stopping (train.max_bad_steps={max_bad}). Resume from the last checkpoint with a "
            "lower optim.lr or a longer optim.warmup_steps.")


def evaluate(run: Run, evaluators: list[eval_lib.Evaluator], state: TrainState
             ) -> dict[str, float]:
    """Runs `evaluators` on the parameters where they are, sharded on the training mesh; every
    process takes part with the same prompts, and only results reach the hosts (one path for one
    process and many: no host ever holds all parameters)."""
    with jax.set_mesh(run.mesh):
        return eval_lib.run(evaluators, nnx.merge(state.recipe.graphdef, state.params))


def train(cfg: ml_collections.ConfigDict, workdir: str, *,
          iterator: Iterator[dict[str, np.ndarray]] | None = None,
          special: SpecialIds | None = None, devices=None) -> RunResult:
    """Trains `cfg` in `workdir` (resuming from its newest complete checkpoint) until
    `train.steps`, or until SIGTERM/SIGINT (then saves and returns with `preempted=True`).

    iterator: per-process batches (docs/data.md); default the Grain pipeline of `cfg.data`.
    One with `get_state`/`set_state` is checkpointed and restored with the model.
    special: the special token ids of batches made without a tokenizer (synthetic ones; with
    `data.tokenizer` set they come from it). devices: the mesh's devices (default all).
    """
    if cfg.train.compile_cache_dir:  # a restart (pre-emption, resume) reuses the compiled step
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.train.compile_cache_dir))
    run = start(cfg, devices=devices, special=special, corpus=iterator is None)
    cfg, mesh = run.cfg, run.mesh
    logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
                 jax.process_count())
    abstract, shardings = abstract_train_state(run)

    if iterator is None:
        from mm1_jax.data.pipeline import make_iterator

        iterator = make_iterator(cfg)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
    state = ckpt.restore(abstract, iterator)
    if state is None:
        state = init_train_state(run, abstract, shardings)
        # init_from: a fresh run starts its chosen components from converted checkpoints.
        state = apply_init_from(cfg, abstract, state)
    start_step = int(jax.device_get(state.step))
    logging.info("starting at step %d of %d", start_step, cfg.train.steps)
    evaluators = eval_lib.from_config(cfg)

    writer = MetricsWriter(workdir, start_step=start_step)
    progress = Progress(total_steps=cfg.train.steps, start_step=start_step)
    peak, peak_source = peak_flops(cfg, mesh.devices.flat)
    logging.info("peak %.3g FLOP/s (%s); model FLOPs per step: %.3g for the decoder + %.3g per "
                 "real image; the encoder computes %d image slots per step", peak, peak_source,
                 model_flops_per_step(cfg, run.model.stats, 0), run.model.stats.flops_per_image,
                 encoded_images(cfg, sharding.data_parallel_size(mesh)))
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len

    step_fn = None
    pending = None  # (step, metrics on device, seconds waiting for data)
    last: dict[str, Any] = {}
    window = {"t": time.perf_counter(), "steps": 0, "data_wait": 0.0}
    counters = dict.fromkeys(HOST_COUNTERS.values(), 0)
    # data/ counts are summed over the log window (a logged step alone would show the mixture's
    # period, not its shares: packed rows of each kind are interleaved deterministically).
    counts: dict[str, float] = {}
    evaluated: dict[str, float] = {}
    preempted = False

    def run_evals(step: int, state) -> None:
        due = [e for e in evaluators if e.due(step, cfg.train.steps)]
        if not due:
            return
        t = time.perf_counter()
        results = evaluate(run, due, state)
        writer.write_eval(step, results)
        evaluated.update(results)
        logging.info("step %d: evaluation in %.1f s: %s", step, time.perf_counter() - t, results)
        window["t"] += time.perf_counter() - t  # not charged to the training step time

    def finish(step: int, metrics, data_wait: float) -> dict[str, Any]:
        metrics = jax.device_get(metrics)  # waits for this step only
        _check(step, metrics, cfg.train.max_bad_steps)
        window["steps"] += 1
        window["data_wait"] += data_wait
        for key, value in metrics.items():
            if key.startswith("data/") and (key.endswith("_tokens") or key.startswith("data/images")):
                counts[key] = counts.get(key, 0.0) + float(value)
        progress.update(step, loss=float(metrics["loss/total"]))
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            elapsed = time.perf_counter() - window["t"]
            dt = elapsed / window["steps"]
            for name in KINDS:  # no tokens of a kind in this step: its loss is not a number
                if f"data/{name}_tokens" in metrics and not metrics[f"data/{name}_tokens"]:
                    del metrics[f"loss/{name}"]
            metrics.update(_host_sum(counters))
            metrics.update(counts)
            if counts["data/images_over_budget"] > OVER_BUDGET_WARN * counts["data/images"]:
                logging.warning(
                    "steps %d-%d: %d of %d images were over model.image_budget=%s and left out "
                    "(their placeholders got zeros); raise the budget (benchmarks/"
                    "data_mixture.py --groups measures what a chip's rows need)",
                    step - window["steps"] + 1, step, counts["data/images_over_budget"],
                    counts["data/images"], cfg.model.image_budget)
            # Model FLOPs count the window's real images (model_flops_per_step).
            flops = model_flops_per_step(cfg, run.model.stats, counts["data/images"] / window["steps"])
            metrics.update({
                "perf/step_time": dt,
                "perf/tokens_per_s": tokens_per_step / dt,
                "perf/images_per_s": counts["data/images"] / elapsed,
                "perf/data_wait_fraction": window["data_wait"] / elapsed,
                "perf/model_flops_per_s": flops / dt,
                "perf/mfu": flops / dt / peak,
            })
            writer.write(step, metrics)
            window.update(t=time.perf_counter(), steps=0, data_wait=0.0)
            counters.update(dict.fromkeys(counters, 0))
            counts.clear()
        return metrics

    end = start_step
    try:
        with _StopSignal(enabled=jax.process_count() == 1) as stop:
            for step in range(start_step, cfg.train.steps):
                t = time.perf_counter()
                try:
                    local = dict(next(iterator))
                except StopIteration:
                    raise TrainingError(f"step {step}: the data iterator is exhausted") from None
                for key, name in HOST_COUNTERS.items():
                    if key in local:
                        counters[name] += int(local.pop(key).sum())
                batch = global_batch(local, mesh)
                data_wait = time.perf_counter() - t
                if step_fn is None:
                    step_fn, seconds = compile_step(abstract, shardings, mesh, batch)
                    logging.info("train step compiled in %.1f s", seconds)
                    window["t"] = time.perf_counter()
                state, metrics = step_fn(state, batch)
                if pending is not None:
                    last = finish(*pending)
                pending = (step + 1, metrics, data_wait)
                end = step + 1

                preempted = (stop.received is not None if stop.enabled
                             else ckpt.manager.reached_preemption(step + 1))
                if preempted or ckpt.should_save(step + 1) or any(
                        e.due(step + 1, cfg.train.steps) for e in evaluators):
                    # Read this step's metrics first: a refused batch stops the run here, before
                    # its step count reaches a checkpoint or an evaluation.
                    last, pending = finish(*pending), None
                if preempted or ckpt.should_save(step + 1):
                    ckpt.save(step + 1, state, iterator, force=preempted)
                if preempted:
                    logging.warning("%s at step %d: checkpoint saved, stopping",
                                    stop.received or "pre-emption notice", step + 1)
                    break
                if step + 1 < cfg.train.steps:
                    run_evals(step + 1, state)
            if pending is not None:
                last = finish(*pending)
            if not preempted and ckpt.latest_step() != end:
                ckpt.save(end, state, iterator, force=True)
            if not preempted and end == cfg.train.steps:
                run_evals(end, state)
    finally:
        ckpt.close()
        writer.close()
        progress.close()
    return RunResult(step=end, preempted=preempted, last_metrics=last, eval_metrics=evaluated)
