"""One record -> one training item: token ids with image slots, shifted targets, loss mask, pixels.

Layout of an item (n <= seq_len tokens):

    <s> text ... <img> <image> x T </img> text ... </s>

`targets[t] = tokens[t + 1]` inside the item; the last token has no target (a packed row must not
learn to predict the next document). The loss mask is 0 where the input or the target is an image
token (<img>, <image>, </img>) and on the last token. Too long an item is cut: never inside an
image block, at most `max_images` images, and an item left with nothing to learn is dropped.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mm1_jax.data import images as image_lib
from mm1_jax.data.records import KINDS, Record
from mm1_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class ItemSpec:
    """What the pipeline needs to turn a record into an item (resolved once from the config)."""

    seq_len: int
    max_images: int
    tokens_per_image: int
    image_size: int
    interpolation: str = "bicubic"
    resize_mode: str = "center_crop"


def layout(record: Record, tok: Tokenizer, tokens_per_image: int) -> tuple[list[int], list[int]]:
    """Token ids of the whole record and the start index of each image block in them."""
    ids = [tok.bos_id]
    starts = []
    block = tok.image_block(tokens_per_image)
    for seg in record.segments:
        if "text" in seg:
            ids.extend(tok.encode(seg["text"]))
        else:
            starts.append(len(ids))
            ids.extend(block)
    ids.append(tok.eos_id)
    return ids, starts


def cut(n_tokens: int, starts: list[int], block_len: int, seq_len: int,
        max_images: int) -> tuple[int, int]:
    """(tokens kept, images kept) for an item of `n_tokens` with image blocks at `starts`.

    The cut falls in text or between blocks, never through one: the item keeps at most
    `seq_len` tokens and `max_images` images; an image block that would cross the end goes
    with everything after it.
    """
    keep = min(n_tokens, seq_len)
    kept_images = 0
    for s in starts:
        if kept_images == max_images or s + block_len > keep:
            keep = min(keep, s)
            break
        kept_images += 1
    return keep, kept_images


def make_item(record: Record, tok: Tokenizer, spec: ItemSpec) -> dict:
    """The item for one record, as numpy arrays (per-token [n], pixels uint8 [k, S, S, 3]).

    Keys: tokens, targets, loss_mask, kinds, image_slots (one entry per image, for the packer's
    image budget), images, truncated (0/1), dropped (0/1: nothing left to learn after the cut).
    """
    ids, starts = layout(record, tok, spec.tokens_per_image)
    block_len = spec.tokens_per_image + 2
    keep, k = cut(len(ids), starts, block_len, spec.seq_len, spec.max_images)
    truncated = int(keep < len(ids))
    tokens = np.asarray(ids[:keep], np.int32)

    targets = np.full_like(tokens, tok.pad_id)
    targets[:-1] = tokens[1:]
    loss_mask = ((targets != tok.image_start_id) & (targets != tok.image_id)
                 & (targets != tok.image_end_id) & (tokens != tok.image_id))
    loss_mask[-1] = False
    dropped = int(not loss_mask.any())

    pixels = np.zeros((k, spec.image_size, spec.image_size, 3), np.uint8)
    image_segments = [s for s in record.segments if "image" in s][:k]
    for i, seg in enumerate(image_segments):
        try:
            pixels[i] = image_lib.decode_resize(seg["image"], spec.image_size,
                                                spec.interpolation, spec.resize_mode)
        except Exception:  # a converter validates every image; this guards hand-made shards
            dropped = 1
            break
    return {
        "tokens": tokens,
        "targets": targets,
        "loss_mask": loss_mask.astype(np.float32),
        "kinds": np.full_like(tokens, KINDS.index(record.kind) + 1),
        "image_slots": np.ones(k, np.int32),
        "images": pixels,
        "truncated": truncated,
        "dropped": dropped,
    }
