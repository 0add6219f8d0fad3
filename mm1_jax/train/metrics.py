"""The trainer's FLOP accounting behind `perf/mfu`, and its console progress bar. Metrics
themselves go through mm1_jax.writer.MetricsWriter."""

from __future__ import annotations

import jax
import ml_collections

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
