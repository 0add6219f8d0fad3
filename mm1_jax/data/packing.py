"""Packing items into fixed rows: Grain's first-fit packer plus the two steps around it.

Grain's `FirstFitPackIterDataset` packs several features at once, each with its own capacity:
`tokens` against `seq_len` and `image_slots` (one entry per image) against `max_images`.
An item goes into the first open row where both fit, so it never splits and an item that would
exceed a row's image budget goes to another row (a new one once all are full). Pixels travel
beside the packer as a per-row list (a "meta feature") rather than inside it, so its buffers hold
only small integer arrays; `Collate` lays them out as `images [b, max_images, S, S, 3]`.
"""

from __future__ import annotations

import sys
from typing import Any

import grain
import numpy as np

from mm1_jax.data.batch import Batch, targets_and_loss_mask
from mm1_jax.data.tokenizer import SpecialIds

META_FEATURES = ("images", "kind", "truncated", "dropped_before")


class _SkipDroppedIterator(grain.DatasetIterator):
    """Skips items marked `dropped`, carrying their count on the next kept item."""

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._pending = 0
        self._empty = None  # a zero-length item, to carry a count past the end of the stream

    def __next__(self) -> dict:
        while True:
            try:
                item = next(self._parent)
            except StopIteration:
                # Only a finite stream (evaluation, tests) ends; its last drops still count.
                if self._pending and self._empty is not None:
                    item, self._empty = dict(self._empty), None
                    item["dropped_before"], self._pending = self._pending, 0
                    return item
                raise
            if item.pop("dropped"):
                self._pending += 1
                self._empty = {k: v[:0] if isinstance(v, (np.ndarray, list)) else 0
                               for k, v in item.items()}
                continue
            item["dropped_before"], self._pending = self._pending, 0
            return item

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "pending": self._pending}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._pending = state["pending"]


class SkipDropped(grain.IterDataset):
    """Removes dropped items while keeping their count in the stream (and in checkpoints)."""

    def __iter__(self) -> grain.DatasetIterator:
        return _SkipDroppedIterator(self._parent.__iter__())


def pack(ds: grain.IterDataset, *, seq_len: int, max_images: int, num_bins: int, pad_id: int,
         seed: int) -> grain.IterDataset:
    """Packs items into rows of `seq_len` tokens and at most `max_images` images."""
    return grain.experimental.FirstFitPackIterDataset(
        SkipDropped(ds), length_struct={"tokens": seq_len, "image_slots": max_images},
        num_packing_bins=num_bins, seed=seed, shuffle_bins=True, meta_features=META_FEATURES,
        padding_struct={"tokens": pad_id, "image_slots": 0})


class Collate:
    """Packed rows -> one `Batch` (mm1_jax.data.batch; a Grain batch_fn).

    Targets and the loss mask come from mm1_jax.data.batch.targets_and_loss_mask, here where
    the packer has fixed the segment boundaries, vectorised over the batch.

    Pixels are copied from each item's uint8 array into the batch's uint8 array; normalisation
    with model.vision.mean/std happens on the device, inside the jitted step
    (mm1_jax.models.vision.normalize_images), which keeps a float pass off the host and moves
    4x fewer bytes to the accelerator. Empty image slots are 0. The batch arrays are recycled:
    one is written again only once nothing but this pool refers to it (its reference count says
    so), i.e. after the consumer dropped the batch and every view of it. Fresh memory instead
    costs a page fault per 4 KiB (benchmarks/data_throughput.py).
    """

    def __init__(self, max_images: int, image_size: int, *, special: SpecialIds, pool: int = 4):
        """`pool`: image arrays kept for reuse; cover the batches a consumer holds at once
        (prefetched, current, and the previous one still bound in a for-loop)."""
        self.max_images, self.image_size, self.pool_size = max_images, image_size, pool
        self.special = special
        self._pool: list[np.ndarray] = []  # recycled images arrays ...
        self._written: list[np.ndarray] = []  # ... and which of their slots hold pixels

    def __getstate__(self):  # worker processes start with an empty pool
        return {**self.__dict__, "_pool": [], "_written": []}

    def __call__(self, rows: list[dict]) -> Batch:
        tokens = np.stack([r["tokens"] for r in rows])  # [b, S]
        seg = np.stack([r["tokens_segment_ids"] for r in rows])
        targets, loss_mask = targets_and_loss_mask(tokens, seg, self.special)
        # kind of each segment: the packer appends items (and their meta values) in order
        kinds = np.stack([np.array([0, *r["kind"]], np.int32)[s] for r, s in zip(rows, seg)])
        mask = np.stack([r["image_slots_segment_ids"] > 0 for r in rows])
        return Batch(
            tokens=tokens, targets=targets, loss_mask=loss_mask, segment_ids=seg,
            positions=np.stack([r["tokens_positions"] for r in rows]), kinds=kinds,
            images=self._pixels(rows, mask), image_mask=mask,
            truncated=np.array([sum(r["truncated"]) for r in rows], np.int32),
            dropped=np.array([sum(r["dropped_before"]) for r in rows], np.int32))

    def _pixels(self, rows: list[dict], mask: np.ndarray) -> np.ndarray:
        images, written = self._recycled(len(rows))
        images[written & ~mask] = 0  # slots a previous batch filled and this one does not
        written[...] = mask
        for i, row in enumerate(rows):
            k = 0
            for item_pixels in row["images"]:  # per item: uint8 [S, S, 3] each, in token order
                for p in item_pixels:
                    images[i, k] = p
                    k += 1
        return images

    def _recycled(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        for j in range(len(self._pool)):
            # 2 = the pool's reference + getrefcount's argument: nobody else holds it
            if self._pool[j].shape[0] == b and sys.getrefcount(self._pool[j]) == 2:
                return self._pool[j], self._written[j]
        s = self.image_size
        images = np.zeros((b, self.max_images, s, s, 3), np.uint8)
        written = np.zeros((b, self.max_images), bool)
        if len(self._pool) < self.pool_size:
            self._pool.append(images)
            self._written.append(written)
        return images, written
