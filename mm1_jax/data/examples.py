"""One record -> one training item: token ids with image slots, and the item's pixels.

Layout of an item (n <= seq_len tokens):

    <s> text ... <img> <image> x T </img> text ... </s>

Targets and the loss mask are made per packed row (mm1_jax.data.packing.Collate), where segment
boundaries are known. Too long an item is cut: never inside an image block, at most
`max_images` images; an item left without text has nothing to learn and is dropped (counted).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mm1_jax.data import images as image_lib
from mm1_jax.data.kinds import KIND_IDS
from mm1_jax.data.records import Record
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


def layout_segments(segments, tok: Tokenizer, tokens_per_image: int, *, eos: bool = True
                    ) -> tuple[list[int], list[int]]:
    """The one token layout of a document given as segments ({"text": str} or {"image": ...}),
    for training items and evaluation prompts alike: <s>, each text segment encoded on its own,
    each image as <img> <image> x T </img>, and </s> unless `eos` is False (a prompt the model
    continues). Returns the ids and the start index of each image block in them."""
    ids = [tok.bos_id]
    starts = []
    block = tok.image_block(tokens_per_image)
    for seg in segments:
        if "text" in seg:
            ids.extend(tok.encode(seg["text"]))
        else:
            starts.append(len(ids))
            ids.extend(block)
    if eos:
        ids.append(tok.eos_id)
    return ids, starts


def layout(record: Record, tok: Tokenizer, tokens_per_image: int) -> tuple[list[int], list[int]]:
    """Token ids of the whole record and the start index of each image block in them."""
    return layout_segments(record.segments, tok, tokens_per_image)


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
    """The item for one record: token ids [n] and its k images, uint8 [S, S, 3] each.

    Keys: tokens, image_slots (k ones, for the packer's image budget), images (list), kind
    (1 interleaved, 2 caption, 3 text), truncated (0/1), dropped (0/1).
    """
    ids, starts = layout(record, tok, spec.tokens_per_image)
    block_len = spec.tokens_per_image + 2
    keep, k = cut(len(ids), starts, block_len, spec.seq_len, spec.max_images)
    whole = keep == len(ids)
    n_text = keep - 1 - k * block_len - int(whole)  # all but <s>, image blocks and </s>
    dropped = int(n_text <= 0)
    pixels = []  # the decoder's own arrays: the batch's float32 array is their only copy
    for seg in [s for s in record.segments if "image" in s][:k]:
        if dropped:
            break
        try:
            pixels.append(image_lib.decode_resize(seg["image"], spec.image_size,
                                                  spec.interpolation, spec.resize_mode))
        except Exception:  # a converter validates every image; this guards hand-made shards
            dropped = 1
    return {
        "tokens": np.asarray(ids[:keep], np.int32),
        "image_slots": np.ones(k, np.int32),
        "images": pixels,
        "kind": KIND_IDS[record.kind],
        "truncated": int(not whole),
        "dropped": dropped,
    }
