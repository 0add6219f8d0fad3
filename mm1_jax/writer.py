"""Where metrics go: TensorBoard event files (through tensorboardX's maintained writer) and
`<workdir>/metrics.jsonl`; evaluation results also to `<workdir>/eval.json`. One writer for the
trainer and `python -m mm1_jax.eval`; only process 0 writes.

Namespaces: loss/ (total, ce, aux, one per data kind), moe/ (aux losses, per-layer per-expert
load, dropped fraction), opt/ (lr, grad norm, skipped steps), data/ (token and image counts),
perf/ (step time, tokens/s, images/s, data-wait fraction, model FLOP/s, MFU), and one namespace
per evaluator (`<config.evals name>/<metric>`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


class MetricsWriter:
    """TensorBoard + metrics.jsonl; a no-op on processes other than 0.

    start_step: a resumed run rewrites the steps after its checkpoint, so rows of
    metrics.jsonl after it are dropped (None: leave the file as it is, e.g. evaluation only).
    """

    def __init__(self, workdir: str, *, start_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.workdir = workdir
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        if start_step is not None:
            _truncate_jsonl(self.jsonl_path, start_step)
        # purge_step drops events TensorBoard holds beyond the resumed step.
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step or None,
                                flush_secs=30)
        self.jsonl = open(self.jsonl_path, "a")

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
                self.tb.add_scalar(tag, float(value), step)
            else:
                row[tag] = value.tolist()
                for layer, per_layer in enumerate(value.reshape(value.shape[0], -1)):
                    self.tb.add_histogram(f"{tag}/layer{layer}", per_layer.astype(np.float64),
                                          step, bins=min(30, max(per_layer.size, 1)))
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        self.tb.flush()

    def write_eval(self, step: int, results: dict[str, float]) -> str:
        """Evaluation results: TensorBoard scalars at `step` beside the training curves, and
        `<workdir>/eval.json` ({"step": step, metric: value, ...}, replaced atomically; the
        newest evaluation). Returns the JSON path."""
        path = os.path.join(self.workdir, "eval.json")
        if not self.enabled:
            return path
        for tag, value in sorted(results.items()):
            self.tb.add_scalar(tag, float(value), step)
        self.tb.flush()
        with open(path + ".tmp", "w") as f:
            json.dump({"step": int(step), **{k: float(v) for k, v in sorted(results.items())}}, f,
                      indent=1)
        os.replace(path + ".tmp", path)
        return path

    def close(self) -> None:
        if self.enabled:
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
