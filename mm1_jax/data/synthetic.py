"""Synthetic batches of the batch contract (`mm1_jax.data.batch.Batch`), for the benchmarks,
the AOT-free speed checks and the tests, which must not depend on a corpus: batch k is a pure
function of (seed, k, shard).
Token ids are random, so the loss stays near ln(vocab): good for speed and equality checks, not
for learning."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

import jax

from mm1_jax.data.batch import Batch, targets_and_loss_mask
from mm1_jax.data.tokenizer import SpecialIds

# Ids of synthetic batches (no tokenizer): a run on them passes these to the trainer
# (`train(..., special=SPECIAL)`); text tokens are drawn above all of them.
SPECIAL = SpecialIds(pad=0, bos=1, eos=2, image=3, image_start=4, image_end=5)


class SyntheticBatches:
    """Iterator of per-process batches with `get_state`/`set_state` (bytes, as grain's Orbax
    handler expects of a non-Grain iterator). Rows hold 1..max_images images, each written as
    start, T placeholders, end, packed among random text, with two segments per row."""

    def __init__(self, cfg, *, seed: int = 0, shard_index: int = 0, shard_count: int = 1,
                 special: SpecialIds = SPECIAL):
        self.cfg, self.seed, self.special = cfg, seed, special
        self.shard_index, self.shard_count = shard_index, shard_count
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = make_global_batch(self.cfg, self.seed, self.index, special=self.special)
        self.index += 1
        b = self.cfg.train.batch_size // self.shard_count
        return jax.tree.map(lambda v: v[self.shard_index * b:(self.shard_index + 1) * b], batch)

    def get_state(self) -> bytes:
        return json.dumps({"index": self.index}).encode()

    def set_state(self, state: bytes) -> None:
        self.index = json.loads(state)["index"]


def make_global_batch(cfg, seed: int, index: int, *,
                      special: SpecialIds = SPECIAL) -> Batch:
    """Global batch `index`; targets and loss mask by the pipeline's rule
    (mm1_jax.data.batch.targets_and_loss_mask). The model must take `special.image` as its
    placeholder id."""
    B, S = cfg.train.batch_size, cfg.train.seq_len
    n_img, T = cfg.data.max_images, cfg.model.connector.num_tokens
    d = cfg.model.decoder
    # Token ids of the real vocabulary only: padding rows (real_vocab_size) are never targets.
    size, vocab = cfg.model.vision.image_size, d.real_vocab_size or d.vocab_size
    rng = np.random.default_rng([seed, index])
    low = max(8, max(dataclasses.astuple(special)) + 1)  # text never hits a special id
    tokens = rng.integers(low, vocab, (B, S)).astype(np.int32)
    image_mask = np.zeros((B, n_img), bool)
    segment_ids = np.zeros((B, S), np.int32)
    positions = np.zeros((B, S), np.int32)
    kinds = np.zeros((B, S), np.int32)
    for r in range(B):
        k = int(rng.integers(1, n_img + 1)) if n_img else 0
        k = min(k, (S // 2) // (T + 2))
        pos = 1
        for i in range(k):
            tokens[r, pos] = special.image_start
            tokens[r, pos + 1:pos + 1 + T] = special.image
            tokens[r, pos + 1 + T] = special.image_end
            pos += T + 2 + int(rng.integers(1, 4))
        image_mask[r, :k] = True
        used = int(rng.integers(S * 3 // 4, S + 1))
        cut = int(rng.integers(pos + 1, used)) if pos + 1 < used else used
        segment_ids[r, :cut], segment_ids[r, cut:used] = 1, 2
        positions[r, :cut], positions[r, cut:used] = np.arange(cut), np.arange(used - cut)
        kinds[r, :cut] = 1 if k else 3
        kinds[r, cut:used] = int(rng.integers(2, 4))
        tokens[r, used:] = special.pad
    targets, loss_mask = targets_and_loss_mask(tokens, segment_ids, special)
    images = rng.integers(0, 256, (B, n_img, size, size, 3), np.uint8)
    images[~image_mask] = 0
    zeros = np.zeros((B,), np.int32)  # nothing is cut or dropped making synthetic rows
    return Batch(tokens=tokens, targets=targets, loss_mask=loss_mask, segment_ids=segment_ids,
                 positions=positions, kinds=kinds, images=images, image_mask=image_mask,
                 truncated=zeros, dropped=zeros.copy())
