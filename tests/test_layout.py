"""Layouts, not values: compiled for TPU topologies (libtpu, no TPU needed), per-chip memory at a
fixed per-chip batch must not grow with the chip count, and no image-path activation may be held
at the size of the global batch on one chip.

"Sharded equals unsharded" tests cannot see an activation that lost its batch sharding, and XLA's
CPU backend with simulated devices did not show this one either, so these compile for TPU.

They compile without libtpu's collective-matmul loops (`aot.NO_COLLECTIVE_MATMULS`): libtpu
chooses those on 16 chips but not on 4, and their buffers (47 MB per chip here, measured
2026-11-23) would make the two programs differ in how matmuls overlap, not in layout.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("libtpu", reason="needs the tpu extra: pip install -e .[tpu] (libtpu "
                    "compiles for TPU topologies without a TPU)")

from mm1_jax.aot import NO_COLLECTIVE_MATMULS, compile_train_step, topology_devices  # noqa: E402
from mm1_jax.config import base_config  # noqa: E402

PER_CHIP = 2  # sequences per chip, whatever the chip count


def small_config(chips: int, moe: bool = False):
    """A few narrow layers with 6 image slots per row, FSDP over every chip; with `moe`, every
    second FFN an 8-expert MoE (capacity path) on a 4-way expert axis, FSDP over the rest.

    remat "none": every activation is kept, so per-chip memory measures layout alone. (With
    remat "full" the 16-chip program also holds more per-chip-sized buffers at once, 197 MB
    against 134 MB on 4 chips with 8 slots: XLA's scheduling, not a lost batch split.)
    Sizes are chosen so that no weight dimension equals the global image count (2 x 16 x 6).
    """
    c = base_config()
    v = c.model.vision
    v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim = 224, 14, 256, 2, 4, 1024
    k = c.model.connector
    k.num_tokens, k.hidden, k.depth = 64, 256, 1
    d = c.model.decoder
    d.vocab_size, d.width, d.depth, d.heads, d.kv_heads, d.head_dim, d.mlp_dim = (
        4096, 256, 2, 4, 4, 64, 768)
    c.model.remat = "none"
    c.data.max_images = 6
    c.train.seq_len = 1024
    c.train.batch_size = PER_CHIP * chips
    c.mesh.shape = (1, -1, 1, 1)
    if moe:
        c.model.moe.num_experts, c.model.moe.every = 8, 2
        c.mesh.shape = (1, -1, 1, 4)
    return c


def compile_plain(cfg, devices):
    """The trainer's step for `devices`, without collective-matmul loops (module doc)."""
    return compile_train_step(cfg, devices, NO_COLLECTIVE_MATMULS)[0]


def _compile(topology: str):
    devices = topology_devices(topology)
    cfg = small_config(len(devices))
    return cfg, compile_plain(cfg, devices)


@pytest.fixture(scope="module")
def compiled_4_and_16():
    return _compile("v5p-8"), _compile("v5p-32")


@pytest.mark.slow
def test_fsdp_temporaries_do_not_grow_with_chips(compiled_4_and_16):
    (_, c4), (_, c16) = compiled_4_and_16
    t4, t16 = (c.memory_analysis().temp_size_in_bytes for c in (c4, c16))
    # Before the batch constraints in the image path: 1,153 MB on 4 chips, 3,150 MB on 16.
    # 2026-11-23: 399.3 MB on 4, 394.7 MB on 16 (441.6 MB with the collective-matmul loops).
    assert t16 <= 1.10 * t4, (t4, t16)


@pytest.mark.slow
def test_moe_temporaries_do_not_grow_with_chips():
    """4 chips (expert=4) against 16 (fsdp=4 x expert=4) at 2 rows of 1,024 tokens per chip,
    fewer than the routing group of 4,096: the groups must split with the batch. When a group
    spanned chips, the backward all-gathered every group's expert buffers onto each chip: 458
    MB on 4 chips, 598 MB on 16 (2026-11-23); with groups within rows 438 and 431 MB."""
    t4, t16 = (compile_plain(small_config(len(d), moe=True), d).memory_analysis().temp_size_in_bytes
               for d in (topology_devices("v5p-8"), topology_devices("v5p-32")))
    assert t16 <= 1.10 * t4, (t4, t16)


@pytest.mark.slow
def test_no_image_activation_at_global_batch(compiled_4_and_16):
    """The cause, named: an HLO value shaped [all images of the global batch, patches, ...]."""
    _, (cfg, c16) = compiled_4_and_16
    global_images = cfg.train.batch_size * cfg.data.max_images  # 192 on 16 chips; 12 per chip
    patches = (cfg.model.vision.image_size // cfg.model.vision.patch_size) ** 2
    found = set(re.findall(rf"\w+\[{global_images},(?:{patches}|{patches + 1}),[0-9,]*\]",
                           c16.as_text()))
    assert not found, f"image activations at the global batch on one chip: {sorted(found)}"


COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


@pytest.mark.slow
def test_image_budget_gathers_within_each_chip(compiled_4_and_16):
    """model.image_budget 0.75 on 16 chips (9 of each chip's 12 slots): no uint8 value (an
    image) moves between chips, no image activation holds the global buffer (16 x 9 images) on
    one chip, and the temporaries shrink below every slot's. Measured when written: 618 MB
    against 717 MB."""
    _, (_, every) = compiled_4_and_16
    devices = topology_devices("v5p-32")
    cfg = small_config(len(devices))
    cfg.model.image_budget = 0.75
    compiled = compile_plain(cfg, devices)
    text = compiled.as_text()
    moved = [line.strip()[:160] for line in text.splitlines()
             if "= u8[" in line and any(f" {c}" in line for c in COLLECTIVES)]
    assert not moved, moved
    patches = (cfg.model.vision.image_size // cfg.model.vision.patch_size) ** 2
    buffer = len(devices) * 9
    found = set(re.findall(rf"\w+\[{buffer},(?:{patches}|{patches + 1}),[0-9,]*\]", text))
    assert not found, f"image activations at the global buffer on one chip: {sorted(found)}"
    t_budget, t_every = (c.memory_analysis().temp_size_in_bytes for c in (compiled, every))
    assert t_budget < 0.95 * t_every, (t_budget, t_every)
