"""The batch contract: one type, `Batch`, that every producer of training batches builds (the
pipeline's collator, the synthetic batches, the AOT command's abstract batch) and the train step
and the model read; and its one rule for what is learned (`targets_and_loss_mask`).

A field added here must be supplied by every producer (the dataclass has no defaults, so a
producer that misses it fails at construction), and `batch_spec` gives its shape and dtype to
every consumer that works from shapes. docs/data.md's table is checked against these fields
(tests/data/test_batch.py).

Dimension letters: b rows, s = `train.seq_len` tokens, m = `data.max_images` image slots,
h = w = `model.vision.image_size` pixels, c = 3 colour channels.

Token layout of a row (docs/data.md): items (segments 1, 2, ...) side by side, padding
(segment 0) after them; an image is `<img>`, T x `<image>`, `</img>`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from mm1_jax.data.tokenizer import SpecialIds
from mm1_jax.errors import DataError


def _field(dtype: str, dims: str, doc: str):
    return dataclasses.field(metadata={"dtype": dtype, "dims": dims, "doc": doc})


class BatchError(DataError):
    """A batch that does not follow the contract; the message names the field."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """b packed rows: numpy arrays on the host, jax arrays in the step (a pytree)."""

    tokens: Any = _field("int32", "bs", "packed items, `pad_id` after the last")
    targets: Any = _field("int32", "bs", "the next token of the same item; `pad_id` at each "
                          "item's last token and on padding")
    loss_mask: Any = _field("float32", "bs", "1 where a target exists and neither the input is "
                            "`<image>` nor the target an image token (`targets_and_loss_mask`)")
    segment_ids: Any = _field("int32", "bs", "1..n per item in the row, 0 on padding")
    positions: Any = _field("int32", "bs", "restart at 0 in each item")
    kinds: Any = _field("int32", "bs", "0 pad, 1 interleaved, 2 caption, 3 text "
                        "(`data.kinds.KIND_IDS`; per-kind losses)")
    images: Any = _field("uint8", "bmhwc", "resized pixels (normalised on device by the model); "
                         "the k-th placeholder run of a row is `images[row, k]`; empty slots 0")
    image_mask: Any = _field("bool", "bm", "True for the row's first n_images slots")
    truncated: Any = _field("int32", "b", "items cut while filling each row "
                            "(`data/truncated_items`)")
    dropped: Any = _field("int32", "b", "items dropped while filling each row "
                          "(`data/dropped_items`)")

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]


FIELDS = tuple(f.name for f in dataclasses.fields(Batch))


def _dims(cfg, rows: int) -> dict[str, int]:
    size = cfg.model.vision.image_size
    return {"b": rows, "s": cfg.train.seq_len, "m": cfg.data.max_images, "h": size, "w": size,
            "c": 3}


def batch_spec(cfg, rows: int | None = None) -> Batch:
    """The contract's shapes and dtypes for `rows` rows (default the global
    `train.batch_size`), as a Batch of `jax.ShapeDtypeStruct`."""
    dims = _dims(cfg, cfg.train.batch_size if rows is None else rows)
    return Batch(**{f.name: jax.ShapeDtypeStruct(tuple(dims[d] for d in f.metadata["dims"]),
                                                 np.dtype(f.metadata["dtype"]))
                    for f in dataclasses.fields(Batch)})


def check_batch(batch: Any, spec: Batch, where: str) -> None:
    """BatchError naming the field when `batch` is not a Batch of `spec`'s shapes and dtypes
    (`where` says who produced it)."""
    if not isinstance(batch, Batch):
        raise BatchError(f"{where} yielded a {type(batch).__name__}, not a "
                         "mm1_jax.data.batch.Batch (docs/data.md, 'Batch')")
    for name in FIELDS:
        got, want = getattr(batch, name), getattr(spec, name)
        if tuple(got.shape) != want.shape or np.dtype(got.dtype) != want.dtype:
            raise BatchError(f"{where}: Batch.{name} is {np.dtype(got.dtype).name} "
                             f"{list(got.shape)}, the config's contract is {want.dtype.name} "
                             f"{list(want.shape)} (train.seq_len, data.max_images, "
                             "model.vision.image_size and the rows per process)")


def targets_and_loss_mask(tokens: np.ndarray, segment_ids: np.ndarray,
                          special: SpecialIds) -> tuple[np.ndarray, np.ndarray]:
    """(targets, loss_mask) for `tokens`, `segment_ids` int [..., S] (segment 0 = padding).

    The target of token t is token t+1 of the same segment (else `special.pad`). The loss mask
    (float32) is 1 where such a target exists, the input is not the image placeholder, and the
    target is none of <img>, <image>, </img>: the model does not learn to predict image tokens
    (they are inserted by the pipeline), never learns across two packed items, never on padding.
    """
    tokens, seg = np.asarray(tokens), np.asarray(segment_ids)
    same = np.zeros(seg.shape, bool)  # does token t+1 belong to t's segment?
    same[..., :-1] = (seg[..., 1:] == seg[..., :-1]) & (seg[..., :-1] > 0)
    targets = np.full_like(tokens, special.pad)
    targets[..., :-1] = np.where(same[..., :-1], tokens[..., 1:], special.pad)
    image_target = np.isin(targets, (special.image_start, special.image, special.image_end))
    loss = same & (tokens != special.image) & ~image_target
    return targets, loss.astype(np.float32)
