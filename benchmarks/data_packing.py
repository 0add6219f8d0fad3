"""Packing efficiency (non-pad tokens / all tokens) at seq_len 4096 on the 45/45/10 mix.

    python benchmarks/data_packing.py [--rows=480]

Runs the real pipeline (Grain mix, first-fit packer, 16 images of 144 tokens per row at most)
over records whose lengths follow public corpus statistics (the images are tiny: only their
token count matters here):
- caption: alt-text and synthetic captions, lognormal text length, median 14 tokens;
- interleaved: OBELICS (Laurencon et al. 2023: 141M documents, 353M images, 115B tokens, i.e.
  2.5 images and ~800 text tokens per document): 1 + Poisson(1.5) images, lognormal text with
  median 550 tokens split between them;
- text: web documents, lognormal length with median 450 tokens (long ones are cut at 4096).
Prints efficiency, images per row and items per row for several `data.packing_bins`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import header  # noqa: E402
from mm1_jax.config import base_config  # noqa: E402
from mm1_jax.data import pipeline, records  # noqa: E402
from mm1_jax.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402


def build_corpus(directory: str, n: int = 3000, seed: int = 0) -> dict:
    """Records with the length distributions above; returns the realised mean lengths."""
    from pydoc_data import topics
    from PIL import Image

    rng = np.random.default_rng(seed)
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    tok_path = os.path.join(directory, "tokenizer.model")
    tok = train_tokenizer([text], 4096, tok_path)
    chars_per_token = len(text[:200_000]) / len(tok.encode(text[:200_000]))

    def words(n_tokens: float) -> str:
        n_chars = max(int(n_tokens * chars_per_token), 1)
        start = int(rng.integers(0, len(text) - n_chars))
        return text[start:start + n_chars]

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    image = records.image_segment(buf.getvalue(), "png", 16, 16)
    caps = [records.Record("caption", f"c{i}", "bench", [
        image, records.text_segment(words(np.clip(rng.lognormal(np.log(14), 0.7), 3, 200)))])
        for i in range(n)]
    docs = []
    for i in range(n):
        k = 1 + int(rng.poisson(1.5))
        total = np.clip(rng.lognormal(np.log(550), 0.9), 20, 20_000)
        parts = rng.dirichlet(np.ones(k + 1)) * total
        segs = [records.text_segment(words(parts[0]))]
        for j in range(k):
            segs += [image, records.text_segment(words(parts[j + 1]))]
        docs.append(records.Record("interleaved", f"d{i}", "bench", segs))
    texts = [records.Record("text", f"t{i}", "bench", [
        records.text_segment(words(np.clip(rng.lognormal(np.log(450), 1.0), 10, 30_000)))])
        for i in range(n)]
    stats = {}
    for kind, recs in (("caption", caps), ("interleaved", docs), ("text", texts)):
        with records.ShardedWriter(os.path.join(directory, kind), "bench", 4) as w:
            for r in recs:
                w.write(r)
        lengths = [sum(len(tok.encode(t)) for t in r.texts) for r in recs[:300]]
        stats[kind] = (float(np.mean(lengths)), float(np.mean([r.num_images for r in recs])))
    return stats


def measure(directory: str, bins: int, rows: int, batch: int = 8) -> dict:
    cfg = base_config()
    cfg.model.vision.image_size, cfg.model.connector.num_tokens = 16, 144
    cfg.train.seq_len, cfg.data.max_images, cfg.train.batch_size = 4096, 16, batch
    cfg.data.dir, cfg.data.tokenizer = directory, os.path.join(directory, "tokenizer.model")
    cfg.data.read_threads, cfg.data.prefetch, cfg.data.packing_bins = 0, 0, bins
    tok = Tokenizer(cfg.data.tokenizer)
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    real = total = images = items = full_images = truncated = 0
    t = time.perf_counter()
    for _ in range(rows // batch):
        b = next(it)
        real += int((b["segment_ids"] > 0).sum())
        total += b["segment_ids"].size
        images += int(b["image_mask"].sum())
        full_images += int((b["image_mask"].sum(1) == 16).sum())
        items += int(((b["positions"] == 0) & (b["segment_ids"] > 0)).sum())
        truncated += int(b["truncated"].sum())
        assert (b["tokens"][b["segment_ids"] == 0] == tok.pad_id).all()
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
        stats = build_corpus(d)
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
