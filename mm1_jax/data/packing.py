"""Packing items into fixed rows: Grain's first-fit packer plus the two steps around it.

Grain's `FirstFitPackIterDataset` packs several features at once, each with its own capacity: the
per-token features against `seq_len` and `image_slots` (one entry per image) against `max_images`.
An item goes into the first open row where both fit, so it never splits and an item that would
exceed a row's image budget goes to another row (a new one once all are full). Pixels travel
beside the packer as a per-row list (a "meta feature") rather than inside it, so its buffers hold
only small integer arrays; `finalize_row` lays them out as `images [max_images, S, S, 3]`.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

TOKEN_FEATURES = ("tokens", "targets", "loss_mask", "kinds")
META_FEATURES = ("images", "truncated", "dropped_before")


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
                self._empty = {k: v[:0] if isinstance(v, np.ndarray) else 0
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
    length = {k: seq_len for k in TOKEN_FEATURES}
    length["image_slots"] = max_images
    padding = {"tokens": pad_id, "targets": pad_id, "loss_mask": 0, "kinds": 0, "image_slots": 0}
    return grain.experimental.FirstFitPackIterDataset(
        SkipDropped(ds), length_struct=length, num_packing_bins=num_bins, seed=seed,
        shuffle_bins=True, meta_features=META_FEATURES, padding_struct=padding)


def finalize_row(row: dict, max_images: int, image_size: int) -> dict:
    """One packed row -> the batch schema (docs/data.md), images still uint8 [M, S, S, 3]."""
    images = np.zeros((max_images, image_size, image_size, 3), np.uint8)
    pixels = [p for p in row["images"] if len(p)]
    if pixels:
        stacked = np.concatenate(pixels)  # [n_img, S, S, 3], in token order
        images[: len(stacked)] = stacked
    return {
        "tokens": row["tokens"],
        "targets": row["targets"],
        "loss_mask": row["loss_mask"],
        "segment_ids": row["tokens_segment_ids"],
        "positions": row["tokens_positions"],
        "kinds": row["kinds"],
        "images": images,
        "image_mask": row["image_slots_segment_ids"] > 0,
        # counters for the trainer's data/ metrics, not model inputs
        "truncated": np.int32(sum(row["truncated"])),
        "dropped": np.int32(sum(row["dropped_before"])),
    }


def normalize_images(batch: dict, scale: np.ndarray, offset: np.ndarray) -> dict:
    """uint8 images [b, M, S, S, 3] -> float32 (x/255 - mean)/std, empty slots 0.

    Done once per batch, after stacking, so the float32 array (4x the bytes) is written once
    and never copied.
    """
    u8 = batch["images"]
    out = np.multiply(u8, scale, dtype=np.float32)
    out += offset
    out[~batch["image_mask"]] = 0.0
    batch["images"] = out
    return batch
