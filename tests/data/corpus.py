"""A small corpus of all three kinds with known contents, and helpers to read batches back.

Every record's first text starts with "[<id>]", so a packed segment can be traced to its record.
Lengths are chosen so that some items overflow a 128-token row (cut in text) or the 4-image
budget (cut before the fifth image).
"""

from __future__ import annotations

import os
import re

import numpy as np
from pydoc_data import topics as pydoc_topics

from experiments.demo_cpu import get_config
from mm1_jax.data import records
from mm1_jax.data.tokenizer import Tokenizer, train_tokenizer
from tests.data import factories as F

SEQ_LEN, MAX_IMAGES, TOKENS_PER_IMAGE, IMAGE_SIZE = 128, 4, 16, 32
MARK = re.compile(r"\[([a-z]+-\d+)\]")


def _words(rng, n: int) -> str:
    text = pydoc_topics.topics["if"] + pydoc_topics.topics["while"]
    start = int(rng.integers(0, len(text) - 4 * n - 1))
    return text[start:start + 4 * n]  # real text: newlines, punctuation, code


def build(directory: str, n_caption=400, n_interleaved=200, n_text=150, seed=0) -> dict:
    """Writes shards and a tokenizer under `directory`; returns {id: Record}."""
    rng = np.random.default_rng(seed)
    out: dict[str, records.Record] = {}
    caps, docs, texts = [], [], []
    for i in range(n_caption):
        w, h = int(rng.integers(16, 48)), int(rng.integers(16, 48))
        caps.append(records.Record("caption", f"cap-{i}", "test", [
            records.image_segment(F.png(w, h, seed=i), "png", w, h),
            records.text_segment(f"[cap-{i}] {_words(rng, int(rng.integers(3, 12)))}")]))
    for i in range(n_interleaved):
        n_img = int(rng.integers(0, 7))  # up to 6: some exceed the 4-image budget
        segs = [records.text_segment(f"[doc-{i}] {_words(rng, int(rng.integers(2, 20)))}")]
        for j in range(n_img):
            segs.append(records.image_segment(F.jpeg(40, 30, seed=100 * i + j), "jpeg", 40, 30))
            if rng.random() < 0.7:
                segs.append(records.text_segment(_words(rng, int(rng.integers(2, 25)))))
        docs.append(records.Record("interleaved", f"doc-{i}", "test", segs))
    for i in range(n_text):
        texts.append(records.Record("text", f"text-{i}", "test", [
            records.text_segment(f"[text-{i}] {_words(rng, int(rng.integers(10, 160)))}")]))
    for kind, recs, shards in (("caption", caps, 3), ("interleaved", docs, 2), ("text", texts, 2)):
        with records.ShardedWriter(os.path.join(directory, kind), "t", shards) as w:
            for r in recs:
                w.write(r)
                out[r.id] = r
    train_tokenizer(list(pydoc_topics.topics.values())[:30], 512,
                    os.path.join(directory, "tokenizer.model"))
    return out


def config(directory: str, **data):
    cfg = get_config()
    cfg.data.dir = directory
    cfg.data.tokenizer = os.path.join(directory, "tokenizer.model")
    cfg.train.seq_len, cfg.data.max_images = SEQ_LEN, MAX_IMAGES
    cfg.model.connector.num_tokens, cfg.model.vision.image_size = TOKENS_PER_IMAGE, IMAGE_SIZE
    cfg.train.batch_size = 4
    cfg.data.read_threads = 2
    for k, v in data.items():
        cfg.data[k] = v
    return cfg


def segments(batch: dict, row: int):
    """(segment id, slice) of each packed item in a row, in order."""
    seg = batch.segment_ids[row]
    for s in np.unique(seg[seg > 0]):
        idx = np.flatnonzero(seg == s)
        yield int(s), slice(int(idx[0]), int(idx[-1]) + 1)


def text_pieces(tokens: np.ndarray, tok: Tokenizer) -> tuple[list[list[int]], int]:
    """Splits an item's tokens at image blocks: (text token runs, number of images)."""
    pieces, cur, n_img, t = [], [], 0, 0
    tokens = [int(x) for x in tokens]
    while t < len(tokens):
        if tokens[t] == tok.image_start_id:
            pieces.append(cur)
            cur, n_img = [], n_img + 1
            t += TOKENS_PER_IMAGE + 2
            continue
        if tokens[t] not in (tok.bos_id, tok.eos_id):
            cur.append(tokens[t])
        t += 1
    pieces.append(cur)
    return [p for p in pieces if p], n_img


def record_of(tokens: np.ndarray, tok: Tokenizer, recs: dict) -> records.Record:
    pieces, _ = text_pieces(tokens, tok)
    m = MARK.search(tok.decode(pieces[0]))
    assert m, f"no [id] marker in {tok.decode(pieces[0])!r}"
    return recs[m.group(1)]
