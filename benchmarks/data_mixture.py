"""What the mixture weights become: shares of rows, tokens and loss tokens per kind, by mix level;
and (--groups) the images per chip that `model.image_budget` must hold.

    python benchmarks/data_mixture.py [--rows=10000] [--levels=sequence,item] [--groups=2,4,8]

Runs the real pipeline at MM1's settings (seq_len 4096, at most 16 images of 144 tokens per row,
45/45/10) over the realistic-length corpus of benchmarks/corpus.py and counts, per kind:
- rows: each row counts for its kinds in proportion to its non-pad tokens (a row of one kind,
  as every row is with `data.mix_level = "sequence"`, counts 1 for that kind);
- tokens: non-pad tokens; loss tokens: tokens with loss_mask 1 (what `data/<kind>_tokens`
  counts in training); fill: non-pad tokens per row of that kind / seq_len.
With --groups, the filled image slots of every group of g consecutive rows (a chip's rows: the
trainer puts a process's consecutive rows on consecutive chips) at the default mix level, and
for budgets f: the share of encoder FLOPs saved (1 - ceil(f x 16 g) / 16 g), how often a group
holds more images than that, and the share of images left out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import corpus  # noqa: E402
from benchmarks.common import header  # noqa: E402
from mm1_jax.data import pipeline  # noqa: E402
from mm1_jax.data.kinds import KIND_IDS  # noqa: E402
from mm1_jax.models.mm1 import image_budget  # noqa: E402


def measure(directory: str, level: str, rows: int, *, batch: int = 8,
            mixture: dict | None = None, seed: int = 0) -> dict:
    """Per-kind totals over the first `rows` rows: {"rows", "tokens", "loss_tokens",
    "pure_rows"} each {kind: float}, and "seconds"."""
    cfg = corpus.config(directory, batch=batch)
    cfg.data.mix_level, cfg.data.shuffle_seed = level, seed
    if mixture is not None:
        cfg.data.mixture = mixture
    out = {key: dict.fromkeys(KIND_IDS, 0.0) for key in ("rows", "tokens", "loss_tokens",
                                                          "pure_rows")}
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    t = time.perf_counter()
    for _ in range(rows // batch):
        b = next(it)
        real = np.maximum((b.kinds > 0).sum(1), 1)  # [b]
        for name, i in KIND_IDS.items():
            of_kind = b.kinds == i  # [b, S]
            n = of_kind.sum(1)
            out["rows"][name] += float((n / real).sum())
            out["pure_rows"][name] += float((n == real).sum())
            out["tokens"][name] += float(n.sum())
            out["loss_tokens"][name] += float((b.loss_mask * of_kind).sum())
    out["seconds"] = time.perf_counter() - t
    it.close()
    return out


def images_per_group(directory: str, rows: int, groups: list[int], *, batch: int = 8,
                     seed: int = 0) -> dict[int, np.ndarray]:
    """{g: filled image slots of each group of g consecutive rows} over the first `rows` rows
    (rows mixed by sequence, the default)."""
    cfg = corpus.config(directory, batch=batch)
    cfg.data.shuffle_seed = seed
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    per_row = np.concatenate([next(it).image_mask.sum(1) for _ in range(rows // batch)])
    it.close()
    return {g: per_row[:len(per_row) // g * g].reshape(-1, g).sum(1) for g in groups}


BUDGETS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


def budget_table(counts: dict[int, np.ndarray], max_images: int = 16) -> list[str]:
    lines = ["rows/chip  mean images/slots  budget  images/chip  encoder saved  P(chip over)  "
             "images left out"]
    for g, per_group in counts.items():
        slots = max_images * g
        for f in BUDGETS:
            k = image_budget(f, slots)
            over = np.maximum(per_group - k, 0)
            lines.append(f"{g:9d}  {per_group.mean() / slots:17.4f}  {f:6.2f}  {k:5d} of {slots:3d}"
                         f"  {1 - k / slots:13.3f}  {np.mean(over > 0):12.4f}  "
                         f"{over.sum() / per_group.sum():15.5f}")
    return lines


def shares(counts: dict) -> dict:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--levels", default="sequence,item", help="'' for none")
    p.add_argument("--groups", default="", help="rows per chip to measure the image budget for")
    a = p.parse_args()
    print(header("mixture shares at seq_len 4096, 45/45/10 (benchmarks/data_mixture.py)"))
    with tempfile.TemporaryDirectory() as d:
        corpus.build(d)
        print(f"# {a.rows} rows of 4096 tokens per level; weights interleaved 0.45, caption 0.45,"
              " text 0.10")
        levels = [level for level in a.levels.split(",") if level]
        if levels:
            print("level     kind         rows   tokens  loss_tokens  fill   pure_rows  seconds")
        for level in levels:
            r = measure(d, level, a.rows)
            rows, tokens, loss = shares(r["rows"]), shares(r["tokens"]), shares(r["loss_tokens"])
            n = sum(r["rows"].values())
            for k in KIND_IDS:
                fill = r["tokens"][k] / max(r["rows"][k], 1e-9) / 4096
                print(f"{level:8s}  {k:11s}  {rows[k]:.4f}  {tokens[k]:.4f}  {loss[k]:11.4f}  "
                      f"{fill:.3f}  {r['pure_rows'][k] / n:9.4f}  {r['seconds']:7.1f}")
        if a.groups:
            groups = [int(g) for g in a.groups.split(",")]
            print("# image slots filled per chip (groups of consecutive rows, mixed by sequence)")
            print("\n".join(budget_table(images_per_group(d, a.rows, groups))))


if __name__ == "__main__":
    main()
