"""MM1 ablation setup (section 3): ViT-L/14 at 336, C-Abstractor with 144 tokens, 1.2B decoder."""

from mm1_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "mm1_ablation_base"
    # Fits v5p-128 (64 chips, 8 sequences each) at 512 x 4096 with 16 image slots: README,
    # "Pod fit" (python -m mm1_jax.aot --config=experiments/mm1_ablation_base.py --topology=v5p-128).
    c.mesh.shape = (1, -1, 1, 1)  # FSDP (ZeRO-3) over every chip
    # 8 rows per chip there hold 87 of 128 image slots on average (MM1's mixture); a chip
    # encodes at most 109: 15% fewer encoder FLOPs, 0.5% of chips' steps over it, 0.014% of
    # images left out (BENCHMARKS.md "Image budget"). On more chips (fewer rows each) raise it.
    c.model.image_budget = 0.85
    return c
