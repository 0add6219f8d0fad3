"""Packing efficiency (non-pad tokens / all tokens) at seq_len 4096 on the 45/45/10 mix.

    python benchmarks/data_packing.py [--rows=480]

Runs the real pipeline (Grain mix, first-fit packer, 16 images of 144 tokens per row at most)
over the realistic-length corpus of benchmarks/corpus.py. Prints efficiency, images per row and
items per row for several `data.packing_bins`, at `--mix_level` (the config's default:
sequence).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import corpus  # noqa: E402
from benchmarks.common import header  # noqa: E402
from mm1_jax.data import pipeline  # noqa: E402
from mm1_jax.data.tokenizer import Tokenizer  # noqa: E402


def measure(directory: str, bins: int, rows: int, batch: int = 8) -> dict:
    cfg = corpus.config(directory, batch=batch)
    cfg.data.packing_bins = bins
    tok = Tokenizer(cfg.data.tokenizer)
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    real = total = images = items = full_images = truncated = 0
    t = time.perf_counter()
    for _ in range(rows // batch):
        b = next(it)
        real += int((b.segment_ids > 0).sum())
        total += b.segment_ids.size
        images += int(b.image_mask.sum())
        full_images += int((b.image_mask.sum(1) == 16).sum())
        items += int(((b.positions == 0) & (b.segment_ids > 0)).sum())
        truncated += int(b.truncated.sum())
        assert (b.tokens[b.segment_ids == 0] == tok.pad_id).all()
    it.close()
    n = (rows // batch) * batch
    return {"efficiency": real / total, "images_per_row": images / n, "items_per_row": items / n,
            "rows_at_image_budget": full_images / n, "truncated": truncated / max(items, 1),
            "seconds": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=480)
    p.add_argument("--bins", default="8,16,32,64")
    a = p.parse_args()
    print(header("packing efficiency at seq_len 4096, 45/45/10 mix (benchmarks/data_packing.py)"))
    with tempfile.TemporaryDirectory() as d:
        stats = corpus.build(d)
        print("# realised mean text tokens / images per item: " + ", ".join(
            f"{k} {t:.0f} / {i:.2f}" for k, (t, i) in stats.items()))
        print(f"# {a.rows} rows of 4096 tokens per setting, per-process batch 8")
        print("packing_bins  efficiency  images/row  items/row  rows_at_16_images  items_cut")
        for bins in map(int, a.bins.split(",")):
            r = measure(d, bins, a.rows)
            print(f"{bins:12d}  {r['efficiency']:10.4f}  {r['images_per_row']:10.2f}  "
                  f"{r['items_per_row']:9.2f}  {r['rows_at_image_budget']:17.3f}  "
                  f"{r['truncated']:9.3f}")


if __name__ == "__main__":
    main()
