"""The batch contract's one rule for what is learned: targets and the loss mask from the tokens
and their segments. Used by the packer's Collate, the synthetic batches, and evaluation.

Token layout of a row (docs/data.md): items (segments 1, 2, ...) side by side, padding
(segment 0) after them; an image is `<img>`, T x `<image>`, `</img>`.
"""

from __future__ import annotations

import numpy as np

from mm1_jax.data.tokenizer import SpecialIds


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
