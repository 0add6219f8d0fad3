"""MM1-7B (dense): ViT-H/14-378, C-Abstractor 144, a ~7.4B Llama-style decoder."""

from experiments._mm1_final import mm1_final


def get_config():
    return mm1_final("mm1_7b", width=4096, depth=32, heads=32, kv_heads=32, mlp_dim=12800)
