"""A corpus of the three kinds whose lengths follow public corpus statistics, for the data
benchmarks and the mixture tests (the images are tiny: only their token count matters here):
- caption: alt-text and synthetic captions, lognormal text length, median 14 tokens;
- interleaved: OBELICS (Laurencon et al. 2023: 141M documents, 353M images, 115B tokens, i.e.
  2.5 images and ~800 text tokens per document): 1 + Poisson(1.5) images, lognormal text with
  median 550 tokens split between them;
- text: web documents, lognormal length with median 450 tokens (long ones are cut at 4096).
Realised means (benchmarks/results/data.md): caption 20 text tokens / 1 image, interleaved
854 / 2.51, text 686 / 0.
"""

from __future__ import annotations

import io
import os

import numpy as np

from mm1_jax.config import base_config
from mm1_jax.data import records
from mm1_jax.data.tokenizer import train_tokenizer


def build(directory: str, n: int = 3000, seed: int = 0) -> dict:
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


def config(directory: str, *, batch: int = 8):
    """MM1's data settings over a corpus from `build`: seq_len 4096, at most 16 images of 144
    tokens per row, 45/45/10; images 16 px (their pixels do not matter), no reader threads."""
    cfg = base_config()
    cfg.model.vision.image_size, cfg.model.connector.num_tokens = 16, 144
    cfg.train.seq_len, cfg.data.max_images, cfg.train.batch_size = 4096, 16, batch
    cfg.data.dir, cfg.data.tokenizer = directory, os.path.join(directory, "tokenizer.model")
    cfg.data.read_threads, cfg.data.prefetch = 0, 0
    return cfg
