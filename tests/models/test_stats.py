"""mm1_jax.models.stats: training FLOPs per image against a count by hand."""

from __future__ import annotations

import os

import pytest

from mm1_jax.config import load_config
from mm1_jax.startup import abstract_model
from mm1_jax.data.synthetic import SPECIAL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_image_flops_count_every_vision_block():
    """XLA counts a scanned block stack's body once; the statistics must count each block."""
    cfg = load_config(os.path.join(ROOT, "experiments", "demo_cpu.py"))
    flops = {}
    for depth in (1, 2, 4):
        cfg.model.vision.depth = depth
        flops[depth] = abstract_model(cfg, SPECIAL).stats.flops_per_image
    per_block = flops[2] - flops[1]
    assert flops[4] - flops[2] == pytest.approx(2 * per_block, rel=1e-6)
    # One pre-LN block, forward: q, k, v, o and the two MLP matmuls (2 FLOPs per multiply-add)
    # over p tokens, and the attention scores and weighted sum; x3 for forward + backward.
    v, p = cfg.model.vision, (cfg.model.vision.image_size // cfg.model.vision.patch_size) ** 2 + 1
    matmuls = 2 * p * (4 * v.width * v.width + 2 * v.width * v.mlp_dim)
    attention = 2 * 2 * p * p * v.width
    assert per_block == pytest.approx(3 * (matmuls + attention), rel=0.1)
