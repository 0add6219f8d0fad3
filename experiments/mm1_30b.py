"""MM1-30B (dense): ViT-H/14-378, C-Abstractor 144, a ~30B decoder with 8 KV heads (GQA)."""

from experiments._mm1_final import mm1_final


def get_config():
    # Fits v5p-512 (256 chips) at 512 x 4096 with 16 image slots, with the mesh, remat
    # and grad_accum of _mm1_final: README "Pod fit" (python -m mm1_jax.aot --topology=v5p-512).
    # No image budget: at 2 rows per chip one that rarely overflows (0.95) saves 3% of encoder
    # FLOPs (BENCHMARKS.md "Image budget").
    return mm1_final("mm1_30b", width=7168, depth=56, heads=56, kv_heads=8, mlp_dim=19456)
