"""The trainer's FLOP accounting: what the step encodes under an image budget, and model FLOPs
that count real images only."""

import pytest

from mm1_jax.config import base_config
from mm1_jax.models.stats import ModelStats
from mm1_jax.train.metrics import encoded_images, model_flops_per_step


def _cfg(budget, accum=1):
    c = base_config()  # 512 rows x 16 slots
    c.model.image_budget, c.train.grad_accum = budget, accum
    return c


def test_encoded_images_are_the_budget_of_every_shard_and_micro_batch():
    assert encoded_images(_cfg(None), 64) == 512 * 16
    assert encoded_images(_cfg(1.0), 64) == 512 * 16
    # 64 shards of 8 rows: ceil(0.85 x 128) = ceil(108.8) = 109 images each.
    assert encoded_images(_cfg(0.85), 64) == 64 * 109
    # Two micro-batches of 4 rows per shard: ceil(0.85 x 64) = ceil(54.4) = 55 each.
    assert encoded_images(_cfg(0.85, accum=2), 64) == 2 * 64 * 55
    # 0.1 x 30 is 3.0000000000000004 in floats: still 3 images, not 4.
    c = _cfg(0.1)
    c.train.batch_size, c.data.max_images = 3, 10
    assert encoded_images(c, 1) == 3


def test_model_flops_count_real_images_with_and_without_a_budget():
    stats = ModelStats(total=0, vision=0, connector=0, decoder=0, embedding=0, non_embedding=0,
                       active=0, decoder_active=0, lr_params=0, peak_lr=0.0,
                       image_tokens_per_image=144, flops_per_token=7.0, flops_per_image=1e6)
    real = 512 * 9.3  # MM1's mixture before issue 8: 9.3 of 16 slots filled
    expected = 512 * 4096 * 7.0 + real * 1e6
    for budget in (None, 0.85):
        assert model_flops_per_step(_cfg(budget), stats, real) == pytest.approx(expected)
