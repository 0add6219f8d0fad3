"""What the training loop reports, kept out of the loop: the FLOP accounting behind `perf/mfu`,
the window of steps between two log lines (`MetricsWindow`) and the console progress bar.
Metrics themselves go through mm1_jax.writer.MetricsWriter.

perf/mfu counts the encoder's FLOPs for real images only (`model_flops_per_step`): empty slots
the encoder computes are not counted as work, and a budget that skips them shows as a shorter
step, hence a higher MFU.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
from absl import logging

from mm1_jax.data.kinds import KINDS
from mm1_jax.models.mm1 import image_budget
from mm1_jax.models.stats import ModelStats
from mm1_jax.perf import device_peak_flops


def peak_flops(cfg: ml_collections.ConfigDict, devices) -> tuple[float, str]:
    """(peak FLOP/s of all `devices` together, where the figure comes from)."""
    devices = list(devices)
    if cfg.train.peak_flops:
        return cfg.train.peak_flops * len(devices), "config.train.peak_flops"
    per_device, source = device_peak_flops(devices[0])
    if devices[0].platform == "cpu":
        # Simulated CPU devices share the host's cores: the measured peak is per host.
        return per_device * len({d.process_index for d in devices}), source
    return per_device * len(devices), source


def model_flops_per_step(cfg: ml_collections.ConfigDict, stats: ModelStats, images: float) -> float:
    """Training FLOPs (forward + backward) of one global batch holding `images` real images: every
    decoder position (padding included), and encoder + connector for each real image.

    An empty image slot is not model work, whether the encoder computes it (no
    `model.image_budget`) or skips it, so it does not count: `perf/mfu` is the honest MFU.
    Encoding empty slots lowers it instead of counting as work; a budget that skips them shows
    as a shorter step at the same model FLOPs, a higher MFU."""
    return (cfg.train.batch_size * cfg.train.seq_len * stats.flops_per_token
            + images * stats.flops_per_image)


def encoded_images(cfg: ml_collections.ConfigDict, batch_shards: int) -> int:
    """Image slots the train step encodes per global batch with its rows split `batch_shards`
    ways: every slot, or with `model.image_budget` each shard's budget per micro-batch."""
    accum = cfg.train.grad_accum
    slots = cfg.train.batch_size // accum // batch_shards * cfg.data.max_images
    return accum * batch_shards * image_budget(cfg.model.image_budget, slots)


class Progress:
    """A tqdm progress bar with ETA on process 0; redraws at most once a second."""

    def __init__(self, *, total_steps: int, start_step: int):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True, mininterval=1.0, smoothing=0.1)

    def update(self, step: int, **postfix: float) -> None:
        if self.enabled:
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()


# A log window that leaves out more than this share of its images over `model.image_budget`
# warns. A budget sized for the run's rows per chip leaves out ~0.01-0.04% (BENCHMARKS.md); the
# count is logged in `data/images_over_budget` either way.
OVER_BUDGET_WARN = 1e-3


class MetricsWindow:
    """The steps since the last log line (big_vision's `u.chrono`, nanodo's `ReportProgress`):
    wall time, time spent waiting for data, and the sums of the `data/` counts (every `data/`
    metric is a count; a logged step alone would show the mixture's period, not its shares).
    `summary` turns them into the logged metrics and starts the next window."""

    def __init__(self, cfg: ml_collections.ConfigDict, stats: ModelStats, peak: float):
        self.cfg, self.stats, self.peak = cfg, stats, peak
        self.restart()

    def restart(self) -> None:
        self.t0, self.steps, self.data_wait = time.perf_counter(), 0, 0.0
        self.counts: dict[str, float] = {}

    def exclude(self, seconds: float) -> None:
        """Time not charged to the training step (evaluation)."""
        self.t0 += seconds

    def add(self, metrics: dict[str, Any], data_wait: float) -> None:
        self.steps += 1
        self.data_wait += data_wait
        for key, value in metrics.items():
            if key.startswith("data/"):
                self.counts[key] = self.counts.get(key, 0.0) + float(value)

    def summary(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """The metrics to log at `step`: its own (a kind without tokens in it has no loss),
        the window's `data/` sums, and the perf/ rates over the window."""
        elapsed = time.perf_counter() - self.t0
        dt, counts = elapsed / self.steps, self.counts
        out = {k: v for k, v in metrics.items()
               if not (k.startswith("loss/") and k[5:] in KINDS
                       and not metrics[f"data/{k[5:]}_tokens"])}
        out.update(counts)
        if counts["data/images_over_budget"] > OVER_BUDGET_WARN * counts["data/images"]:
            logging.warning(
                "steps %d-%d: %d of %d images were over model.image_budget=%s and left out "
                "(their placeholders got zeros); raise the budget (benchmarks/"
                "data_mixture.py --groups measures what a chip's rows need)",
                step - self.steps + 1, step, counts["data/images_over_budget"],
                counts["data/images"], self.cfg.model.image_budget)
        flops = model_flops_per_step(self.cfg, self.stats, counts["data/images"] / self.steps)
        out.update({
            "perf/step_time": dt,
            "perf/tokens_per_s": self.cfg.train.batch_size * self.cfg.train.seq_len / dt,
            "perf/images_per_s": counts["data/images"] / elapsed,
            "perf/data_wait_fraction": self.data_wait / elapsed,
            "perf/model_flops_per_s": flops / dt,
            "perf/mfu": flops / dt / self.peak,
        })
        self.restart()
        return out
