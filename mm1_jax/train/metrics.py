"""Where metrics go: TensorBoard event files, `<workdir>/metrics.jsonl`, and a console progress
bar with ETA. Also the FLOP accounting behind `perf/mfu`.

Namespaces: loss/ (total, ce, aux, one per data kind), moe/ (aux losses, per-layer per-expert
load, dropped fraction), opt/ (lr, grad norm, skipped steps), data/ (token and image counts),
perf/ (step time, tokens/s, images/s, data-wait fraction, model FLOP/s, MFU). Only process 0
writes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

def peak_flops(cfg: ml_collections.ConfigDict, devices) -> tuple[float, str]:
    """(peak FLOP/s of all `devices` together, where the figure comes from)."""
    from mm1_jax.perf import device_peak_flops

    devices = list(devices)
    if cfg.train.peak_flops:
        return cfg.train.peak_flops * len(devices), "config.train.peak_flops"
    per_device, source = device_peak_flops(devices[0])
    if devices[0].platform == "cpu":
        # Simulated CPU devices share the host's cores: the measured peak is per host.
        return per_device * len({d.process_index for d in devices}), source
    return per_device * len(devices), source


def model_flops_per_step(cfg: ml_collections.ConfigDict) -> float:
    """Training FLOPs (forward + backward) of one global batch: every decoder position and every
    image slot is computed (padding included), so that is what the hardware is measured on."""
    from mm1_jax.inspect import model_stats

    stats = model_stats(cfg)
    b = cfg.train.batch_size
    return b * cfg.train.seq_len * stats["flops_per_token"] + b * cfg.data.max_images * stats["flops_per_image"]


def _scalar_event(step: int, tag: str, value: float):
    from tensorboard.compat.proto import event_pb2, summary_pb2

    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary)


def _histogram_event(step: int, tag: str, values: np.ndarray):
    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = np.asarray(values, np.float64).ravel()
    counts, edges = np.histogram(values, bins=min(30, max(values.size, 1)))
    hist = summary_pb2.HistogramProto(
        min=float(values.min()), max=float(values.max()), num=float(values.size),
        sum=float(values.sum()), sum_squares=float((values**2).sum()),
        bucket_limit=[float(e) for e in edges[1:]], bucket=[float(c) for c in counts])
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, histo=hist)])
    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary)


class MetricsWriter:
    """TensorBoard + metrics.jsonl + tqdm progress bar; no-ops on processes other than 0."""

    def __init__(self, workdir: str, *, total_steps: int, start_step: int):
        self.enabled = jax.process_index() == 0
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        if not self.enabled:
            return
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        from tqdm import tqdm

        os.makedirs(workdir, exist_ok=True)
        _truncate_jsonl(self.jsonl_path, start_step)
        self.tb = EventFileWriter(os.path.join(workdir, "tensorboard"))
        if start_step:  # a resumed run rewrites the steps after its checkpoint
            from tensorboard.compat.proto import event_pb2

            self.tb.add_event(event_pb2.Event(
                wall_time=time.time(), step=start_step,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self.jsonl = open(self.jsonl_path, "a")
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        mininterval=1.0, smoothing=0.1)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Scalars become TB scalars; arrays (per-layer expert load) become per-layer histograms
        in TB and nested lists in metrics.jsonl."""
        if not self.enabled:
            return
        row = {"step": step}
        for tag, value in sorted(metrics.items()):
            value = np.asarray(value)
            if value.ndim == 0:
                row[tag] = value.item()
                self.tb.add_event(_scalar_event(step, tag, float(value)))
            else:
                row[tag] = value.tolist()
                for layer, per_layer in enumerate(value.reshape(value.shape[0], -1)):
                    self.tb.add_event(_histogram_event(step, f"{tag}/layer{layer}", per_layer))
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        self.tb.flush()

    def progress(self, step: int, **postfix: float) -> None:
        if self.enabled:
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(step - self.bar.n)  # redraws at most once a second

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.jsonl.close()
            self.tb.close()


def _truncate_jsonl(path: str, start_step: int) -> None:
    """Drops rows after `start_step`: a run killed after its last checkpoint logged steps that the
    resumed run is about to redo."""
    if not os.path.exists(path):
        return
    rows = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= start_step:
                    rows.append(line)
            except (json.JSONDecodeError, KeyError):  # a line cut short by SIGKILL
                continue
    with open(path, "w") as f:
        f.writelines(rows)
