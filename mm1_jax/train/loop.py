"""The training loop: the side effects around the pure `train_step`.

Start-up order, so that every config mistake surfaces before anything compiles: validate the
config, resolve the tokenizer's special ids, build the mesh and check the batch against it, build
the abstract state, then restore the newest complete checkpoint or initialise, then compile.

Each iteration dispatches step t and only then reads the metrics of step t - 1, so the host never
stalls the device; non-finite streaks and placeholder mismatches are therefore caught one step
late, which changes nothing (a skipped step leaves the state as it was).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from mm1_jax.config import ConfigError, validate
from mm1_jax.convert.init_from import apply_init_from
from mm1_jax.train import mesh as mesh_lib
from mm1_jax.train.checkpoint import Checkpointer
from mm1_jax.train.metrics import MetricsWriter, model_flops_per_step, peak_flops
from mm1_jax.train.state import TrainState, abstract_train_state, build_model, init_train_state
from mm1_jax.train.step import train_step


class TrainingError(RuntimeError):
    """The run cannot continue (diverged, or the data disagrees with the model); says at which step."""


@dataclasses.dataclass
class RunResult:
    step: int  # steps completed
    preempted: bool  # stopped by SIGTERM/SIGINT after saving
    last_metrics: dict[str, Any]
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the last evaluation


def prepare_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validates, builds the demo corpus if asked, and writes the tokenizer's ids into the config."""
    cfg = validate(cfg)
    if cfg.checkpoint.every < 1 or cfg.checkpoint.keep < 1:
        raise ConfigError("config.checkpoint.every and config.checkpoint.keep must be >= 1")
    if cfg.train.build_demo_data:
        from mm1_jax.data.demo import ensure_demo_data

        ensure_demo_data(cfg.data.dir)
    if cfg.data.tokenizer:
        from mm1_jax.data.tokenizer import Tokenizer

        if not os.path.exists(cfg.data.tokenizer):
            raise ConfigError(f"config.data.tokenizer: {cfg.data.tokenizer!r} does not exist")
        tok = Tokenizer(cfg.data.tokenizer)
        d = cfg.model.decoder
        if (d.real_vocab_size or d.vocab_size) < tok.vocab_size:
            raise ConfigError(
                f"config.model.decoder.vocab_size: {d.real_vocab_size or d.vocab_size} tokens "
                f"(real_vocab_size, else vocab_size) are fewer than the tokenizer's "
                f"{tok.vocab_size} pieces ({cfg.data.tokenizer}); a converted decoder grows its "
                "vocabulary with `python -m mm1_jax.convert decoder --vocab_size`")
        with cfg.unlocked():
            cfg.model.image_token_id = tok.image_id
    return cfg


def compile_step(abstract: TrainState, shardings: TrainState, mesh, batch: dict[str, Any]):
    """The jitted, sharded `train_step` for batches shaped like `batch` (arrays or structs); the
    input state is donated. Returns (compiled, seconds spent compiling)."""
    batch_sh = {k: mesh_lib.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}
    jitted = jax.jit(train_step, in_shardings=(shardings, batch_sh),
                     out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
    t = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jitted.lower(abstract, {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                                           for k, v in batch.items()}).compile()
    return compiled, time.perf_counter() - t


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the data-parallel axes."""
    return {k: jax.make_array_from_process_local_data(mesh_lib.batch_sharding(mesh, v.ndim), v)
            for k, v in local.items()}


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
            "tokens per image (data.* vs model.connector.num_tokens, or model.image_token_id)")
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


def train(cfg: ml_collections.ConfigDict, workdir: str, *,
          iterator: Iterator[dict[str, np.ndarray]] | None = None,
          devices=None, model_fn: Callable = build_model) -> RunResult:
    """Trains `cfg` in `workdir` (resuming from its newest complete checkpoint) until
    `train.steps`, or until SIGTERM/SIGINT (then saves and returns with `preempted=True`).

    iterator: per-process batches (docs/data.md); default the Grain pipeline of `cfg.data`.
    One with `get_state`/`set_state` is checkpointed and restored with the model.
    devices: the mesh's devices (default all).
    """
    cfg = prepare_config(cfg)
    mesh = mesh_lib.make_mesh(cfg, devices)
    mesh_lib.check_batch(cfg, mesh)
    logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
                 jax.process_count())
    abstract, shardings = abstract_train_state(cfg, mesh, model_fn)

    if iterator is None:
        from mm1_jax.data.pipeline import make_iterator

        iterator = make_iterator(cfg)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
    state = ckpt.restore(abstract, iterator)
    if state is None:
        state = init_train_state(cfg, abstract, shardings, model_fn)
        # init_from (issue 10): a fresh run starts its chosen components from checkpoints.
        state = apply_init_from(cfg, abstract, state)
    start = int(jax.device_get(state.step))
    logging.info("starting at step %d of %d", start, cfg.train.steps)

    writer = MetricsWriter(workdir, total_steps=cfg.train.steps, start_step=start)
    flops, (peak, peak_source) = model_flops_per_step(cfg), peak_flops(cfg, mesh.devices.flat)
    logging.info("peak %.3g FLOP/s (%s); model %.3g FLOPs per step", peak, peak_source, flops)
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len

    step_fn = None
    pending = None  # (step, metrics on device, seconds waiting for data)
    last: dict[str, Any] = {}
    window = {"t": time.perf_counter(), "steps": 0, "data_wait": 0.0, "images": 0}
    preempted = False

    def evaluate(step: int, state) -> dict[str, float]:
        """Runs the evaluation on the current (sharded) parameters; every process takes part."""
        from flax import nnx

        from mm1_jax.eval.harness import run_eval, write_results

        t = time.perf_counter()
        if jax.process_count() > 1:
            # Generation reads its outputs on the host, which a multi-process array does not
            # allow: every process gathers the parameters and evaluates a local copy.
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(state.params, tiled=True)
            results = run_eval(nnx.merge(state.recipe.graphdef, params), cfg)
        else:
            with jax.set_mesh(mesh):
                results = run_eval(nnx.merge(state.recipe.graphdef, state.params), cfg)
        if jax.process_index() == 0:  # eval.json + TensorBoard; metrics.jsonl is one row per train log
            write_results(workdir, step, results)
        logging.info("step %d: evaluation in %.1f s: %s", step, time.perf_counter() - t, results)
        window["t"] += time.perf_counter() - t  # not charged to the training step time
        return results

    evaluated: dict[str, float] = {}

    def finish(step: int, metrics, data_wait: float) -> dict[str, Any]:
        metrics = jax.device_get(metrics)  # waits for this step only
        _check(step, metrics, cfg.train.max_bad_steps)
        window["steps"] += 1
        window["data_wait"] += data_wait
        window["images"] += int(metrics["data/images"])
        writer.progress(step, loss=float(metrics["loss/total"]))
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            elapsed = time.perf_counter() - window["t"]
            dt = elapsed / window["steps"]
            metrics.update({
                "perf/step_time": dt,
                "perf/tokens_per_s": tokens_per_step / dt,
                "perf/images_per_s": window["images"] / elapsed,
                "perf/data_wait_fraction": window["data_wait"] / elapsed,
                "perf/model_flops_per_s": flops / dt,
                "perf/mfu": flops / dt / peak,
            })
            for name in ("interleaved", "caption", "text"):  # no tokens of a kind: no loss
                if f"data/{name}_tokens" in metrics and not metrics[f"data/{name}_tokens"]:
                    del metrics[f"loss/{name}"]
            writer.write(step, metrics)
            window.update(t=time.perf_counter(), steps=0, data_wait=0.0, images=0)
        return metrics

    try:
        with _StopSignal(enabled=jax.process_count() == 1) as stop:
            for step in range(start, cfg.train.steps):
                t = time.perf_counter()
                try:
                    local = next(iterator)
                except StopIteration:
                    raise TrainingError(f"step {step}: the data iterator is exhausted") from None
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

                preempted = (stop.received is not None if stop.enabled
                             else ckpt.manager.reached_preemption(step + 1))
                if preempted or ckpt.should_save(step + 1):
                    ckpt.save(step + 1, state, iterator, force=preempted)
                if preempted:
                    logging.warning("%s at step %d: checkpoint saved, stopping",
                                    stop.received or "pre-emption notice", step + 1)
                    break
                every = cfg.train.eval_every
                if every and (step + 1) % every == 0 and step + 1 < cfg.train.steps:
                    evaluated = evaluate(step + 1, state)
            if pending is not None:
                last = finish(*pending)
            end = pending[0] if pending is not None else start
            if not preempted and ckpt.latest_step() != end:
                ckpt.save(end, state, iterator, force=True)
            final_eval = cfg.train.eval_at_end or (
                cfg.train.eval_every and end % cfg.train.eval_every == 0)
            if not preempted and end == cfg.train.steps and final_eval:
                evaluated = evaluate(end, state)
    finally:
        ckpt.close()
        writer.close()
    return RunResult(step=end, preempted=preempted, last_metrics=last, eval_metrics=evaluated)

