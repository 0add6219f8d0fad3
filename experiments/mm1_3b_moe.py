"""MM1-3B-MoE (section 4): the 3B decoder with 64 experts in every 2nd FFN; 64B parameters."""

from experiments._mm1_final import mm1_final


def get_config():
    return mm1_final("mm1_3b_moe", width=3072, depth=26, heads=24, kv_heads=24, mlp_dim=8064,
                     experts=64, every=2)
