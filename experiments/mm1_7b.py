"""MM1-7B (dense): ViT-H/14-378, C-Abstractor 144, a ~7.4B Llama-style decoder."""

from experiments._mm1_final import mm1_final


def get_config():
    # Fits v5p-256 (128 chips) at 512 x 4096 with 16 image slots, with the mesh, remat
    # and grad_accum of _mm1_final: README "Pod fit" (python -m mm1_jax.aot --topology=v5p-256).
    # 4 rows per chip: a chip encodes at most 58 of its 64 image slots (they hold 44 on average):
    # 9% fewer encoder FLOPs, 0.04% of images left out (BENCHMARKS.md "Image budget").
    return mm1_final("mm1_7b", width=4096, depth=32, heads=32, kv_heads=32, mlp_dim=12800,
                     image_budget=0.9)
