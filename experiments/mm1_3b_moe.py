"""MM1-3B-MoE (section 4): the 3B decoder with 64 experts in every 2nd FFN; 64B parameters."""

from experiments._mm1_final import mm1_final


def get_config():
    # Fits v5p-256 (128 chips) at 512 x 4096 with 16 image slots, with the mesh, remat
    # and grad_accum of _mm1_final: README "Pod fit" (python -m mm1_jax.aot --topology=v5p-256).
    # 4 rows per chip: a chip encodes at most 58 of its 64 image slots (they hold 44 on average):
    # 9% fewer encoder FLOPs, 0.04% of images left out (BENCHMARKS.md "Image budget").
    return mm1_final("mm1_3b_moe", width=3072, depth=26, heads=24, kv_heads=24, mlp_dim=8064,
                     experts=64, every=2, image_budget=0.9)
