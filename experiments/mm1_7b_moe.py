"""MM1-7B-MoE (section 4): the 7B decoder with 32 experts in every 4th FFN; 47B parameters."""

from experiments._mm1_final import mm1_final


def get_config():
    return mm1_final("mm1_7b_moe", width=4096, depth=32, heads=32, kv_heads=32, mlp_dim=12800,
                     experts=32, every=4)
