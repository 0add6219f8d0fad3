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
(`metrics.MetricsWindow`). What is logged, and how perf/mfu is counted: mm1_jax/train/metrics.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Iterator

import jax
import ml_collections
from absl import logging
from flax import nnx

from mm1_jax import sharding
from mm1_jax.checkpoint import Checkpointer
from mm1_jax.convert.init_from import apply_init_from, check_shapes, resolve_architecture
from mm1_jax.data.batch import Batch, batch_spec, check_batch
from mm1_jax.data.pipeline import make_iterator
from mm1_jax.data.tokenizer import SpecialIds
from mm1_jax.errors import RunError
from mm1_jax.eval import evaluators as eval_lib
from mm1_jax.startup import Run, start
from mm1_jax.train.metrics import (MetricsWindow, Progress, encoded_images, model_flops_per_step,
                                   peak_flops)
from mm1_jax.train.state import TrainState, abstract_train_state, init_train_state
from mm1_jax.train.step import train_step
from mm1_jax.writer import MetricsWriter


class _LibraryInfoFilter(logging.logging.Filter):
    """Drops INFO lines of Orbax and Grain (dozens per checkpoint); warnings still show."""

    def filter(self, record):
        noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain"))
        return record.levelno >= logging.logging.WARNING or not noisy


def quiet_library_logs() -> None:
    """For the command-line entry points (train, demo): keep the console to the run's own lines."""
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())


class TrainingError(RunError):
    """The run cannot continue (diverged, or the data disagrees with the model); says at which step."""


@dataclasses.dataclass
class RunResult:
    step: int  # steps completed
    preempted: bool  # stopped by SIGTERM/SIGINT after saving
    last_metrics: dict[str, Any]
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the last evaluation


def compile_step(abstract: TrainState, shardings: TrainState, mesh, batch: Batch,
                 compiler_options: dict[str, Any] | None = None):
    """The jitted, sharded `train_step` for batches shaped like `batch` (arrays or
    `batch_spec` structs); the input state is donated. Returns (compiled, seconds spent
    compiling). `compiler_options`: XLA flags for this compile only
    (`aot.NO_COLLECTIVE_MATMULS`)."""
    batch_sh = jax.tree.map(lambda v: sharding.batch_sharding(mesh, len(v.shape)), batch)
    jitted = jax.jit(train_step, in_shardings=(shardings, batch_sh),
                     out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    t = time.perf_counter()
    with jax.set_mesh(mesh):
        shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), batch)
        compiled = jitted.lower(abstract, shapes).compile(compiler_options)
    return compiled, time.perf_counter() - t


def global_batch(local: Batch, mesh) -> Batch:
    """This process's rows -> global arrays sharded over the data-parallel axes."""
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(
        sharding.batch_sharding(mesh, v.ndim), v), local)


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


class _Feed:
    """The data iterator, step by step: this process's rows, checked against the batch contract
    once, as global arrays on the mesh, and the seconds spent waiting for them."""

    def __init__(self, iterator: Iterator[Batch], run: Run):
        self.iterator, self.mesh = iterator, run.mesh
        self.spec = batch_spec(run.cfg, run.cfg.train.batch_size // jax.process_count())
        self.checked = False

    def next(self, step: int) -> tuple[Batch, float]:
        t = time.perf_counter()
        try:
            local = next(self.iterator)
        except StopIteration:
            raise TrainingError(f"step {step}: the data iterator is exhausted") from None
        if not self.checked:
            check_batch(local, self.spec, "the data iterator")
            self.checked = True
        return global_batch(local, self.mesh), time.perf_counter() - t


class _Report:
    """Everything the loop reports: step metrics read one step late (the host never stalls the
    device) and checked, the log window, the progress bar, the metrics and evaluation files."""

    def __init__(self, run: Run, workdir: str, start_step: int):
        cfg = run.cfg
        self.cfg, self.run = cfg, run
        self.writer = MetricsWriter(workdir, start_step=start_step)
        self.progress = Progress(total_steps=cfg.train.steps, start_step=start_step)
        peak, source = peak_flops(cfg, run.mesh.devices.flat)
        self.window = MetricsWindow(cfg, run.model.stats, peak)
        self.pending = None  # (step, metrics on device, seconds waiting for data)
        self.last: dict[str, Any] = {}
        self.evaluated: dict[str, float] = {}
        logging.info("peak %.3g FLOP/s (%s); model FLOPs per step: %.3g for the decoder + %.3g "
                     "per real image; the encoder computes %d image slots per step", peak, source,
                     model_flops_per_step(cfg, run.model.stats, 0),
                     run.model.stats.flops_per_image,
                     encoded_images(cfg, sharding.data_parallel_size(run.mesh)))

    def dispatched(self, step: int, metrics, data_wait: float) -> None:
        """Step `step` was dispatched: read the one before it."""
        self.flush()
        self.pending = (step, metrics, data_wait)

    def flush(self) -> None:
        """Reads the pending step's metrics (waiting for that step only)."""
        if self.pending is None:
            return
        step, metrics, data_wait = self.pending
        self.pending = None
        metrics = jax.device_get(metrics)
        _check(step, metrics, self.cfg.train.max_bad_steps)
        self.window.add(metrics, data_wait)
        self.progress.update(step, loss=float(metrics["loss/total"]))
        if step % self.cfg.train.log_every == 0 or step == self.cfg.train.steps:
            metrics = self.window.summary(step, metrics)
            self.writer.write(step, metrics)
        self.last = metrics

    def evaluate(self, step: int, evaluators: list[eval_lib.Evaluator], state) -> None:
        """The evaluators due at `step`; their time is not charged to the training step."""
        due = [e for e in evaluators if e.due(step, self.cfg.train.steps)]
        if not due:
            return
        t = time.perf_counter()
        results = evaluate(self.run, due, state)
        self.writer.write_eval(step, results)
        self.evaluated.update(results)
        logging.info("step %d: evaluation in %.1f s: %s", step, time.perf_counter() - t, results)
        self.window.exclude(time.perf_counter() - t)

    def close(self) -> None:
        self.writer.close()
        self.progress.close()


def _restore_or_init(run: Run, ckpt: Checkpointer, iterator, abstract: TrainState,
                     shardings: TrainState) -> TrainState:
    """The newest complete checkpoint of the run, or a fresh state (with `init_from`)."""
    if ckpt.latest_step() is not None:  # a mismatch is one line naming the parameter
        check_shapes(abstract.params, os.path.join(ckpt.directory, str(ckpt.latest_step()), "state"))
    state = ckpt.restore(abstract, iterator)
    if state is None:
        state = init_train_state(run, abstract, shardings)
        # init_from: a fresh run starts its chosen components from converted checkpoints.
        state = apply_init_from(run.cfg, abstract, state)
    return state


def train(cfg: ml_collections.ConfigDict, workdir: str, *,
          iterator: Iterator[Batch] | None = None,
          special: SpecialIds | None = None, devices=None) -> RunResult:
    """Trains `cfg` in `workdir` (resuming from its newest complete checkpoint) until
    `train.steps`, or until SIGTERM/SIGINT (then saves and returns with `preempted=True`).
    Architecture fields `cfg` leaves at their defaults come from that checkpoint, or from the
    checkpoints of `init_from` (mm1_jax.convert.init_from.resolve_architecture).

    iterator: per-process `Batch`es (docs/data.md); default the Grain pipeline of `cfg.data`.
    One with `get_state`/`set_state` is checkpointed and restored with the model.
    special: the special token ids of batches made without a tokenizer (synthetic ones; with
    `data.tokenizer` set they come from it). devices: the mesh's devices (default all).
    """
    if cfg.train.compile_cache_dir:  # a restart (pre-emption, resume) reuses the compiled step
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.train.compile_cache_dir))
    # the architecture of what the run starts from: its own checkpoint, else init_from's
    cfg = resolve_architecture(cfg, workdir)
    run = start(cfg, devices=devices, special=special, corpus=iterator is None)
    cfg, steps = run.cfg, run.cfg.train.steps
    logging.info("mesh %s over %d devices (%d processes)", dict(run.mesh.shape), run.mesh.size,
                 jax.process_count())
    iterator = make_iterator(cfg) if iterator is None else iterator
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
    abstract, shardings = abstract_train_state(run)
    state = _restore_or_init(run, ckpt, iterator, abstract, shardings)
    end = int(jax.device_get(state.step))
    logging.info("starting at step %d of %d", end, steps)
    evaluators = eval_lib.from_config(cfg)
    feed, report, step_fn, preempted = _Feed(iterator, run), _Report(run, workdir, end), None, False
    try:
        with _StopSignal(enabled=jax.process_count() == 1) as stop:
            for step in range(end, steps):
                batch, data_wait = feed.next(step)
                if step_fn is None:
                    step_fn, seconds = compile_step(abstract, shardings, run.mesh, batch)
                    logging.info("train step compiled in %.1f s", seconds)
                    report.window.restart()
                state, metrics = step_fn(state, batch)
                report.dispatched(step + 1, metrics, data_wait)
                end = step + 1
                preempted = stop.received is not None if stop.enabled else (
                    ckpt.manager.reached_preemption(end))
                save = preempted or ckpt.should_save(end)
                if save or any(e.due(end, steps) for e in evaluators):
                    # A refused batch stops the run here, before its step count reaches a
                    # checkpoint or an evaluation.
                    report.flush()
                if save:
                    ckpt.save(end, state, iterator, force=preempted)
                if preempted:
                    logging.warning("%s at step %d: checkpoint saved, stopping",
                                    stop.received or "pre-emption notice", end)
                    break
                if end < steps:
                    report.evaluate(end, evaluators, state)
            report.flush()
            if not preempted and ckpt.latest_step() != end:
                ckpt.save(end, state, iterator, force=True)
            if not preempted and end == steps:
                report.evaluate(end, evaluators, state)
    finally:
        ckpt.close()
        report.close()
    return RunResult(step=end, preempted=preempted, last_metrics=report.last,
                     eval_metrics=report.evaluated)
