"""MM1-30B (dense): ViT-H/14-378, C-Abstractor 144, a ~30B decoder with 8 KV heads (GQA)."""

from experiments._mm1_final import mm1_final


def get_config():
    return mm1_final("mm1_30b", width=7168, depth=56, heads=56, kv_heads=8, mlp_dim=19456)
