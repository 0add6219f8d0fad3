"""MM1 ablation setup (section 3): ViT-L/14 at 336, C-Abstractor with 144 tokens, 1.2B decoder."""

from mm1_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "mm1_ablation_base"
    return c
