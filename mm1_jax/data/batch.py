"""The batch contract's one rule for targets and the loss mask (placeholder until merge)."""

from __future__ import annotations

import numpy as np


def targets_and_loss_mask(tokens: np.ndarray, segment_ids: np.ndarray, special):
    """(targets, loss_mask float32) of rows `tokens` [b, S] with `segment_ids` [b, S]: the next
    token of the same segment; loss where such a target exists, the input is not an image
    placeholder and the target is not an image-block token."""
    same = np.zeros(segment_ids.shape, bool)
    same[:, :-1] = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] > 0)
    targets = np.full_like(tokens, special.pad)
    targets[:, :-1] = np.where(same[:, :-1], tokens[:, 1:], special.pad)
    image_ids = (special.image_start, special.image, special.image_end)
    loss = same & (tokens != special.image) & ~np.isin(targets, image_ids)
    return targets, loss.astype(np.float32)
