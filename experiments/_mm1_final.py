"""Shared by the MM1 scale-up configs (section 4): ViT-H/14 at 378, C-Abstractor 144 tokens.

Not an experiment itself (the leading underscore): `mm1_3b.py` etc. call `mm1_final(...)`.
MM1 does not publish decoder dimensions; the ones chosen here are Llama-style and land the
decoder sizes on the configs' names and the MoE totals on the paper's 64B / 47B
(checked by tests/test_experiments.py, printed by `python -m mm1_jax.summary`).
"""

from mm1_jax.config import base_config


def mm1_final(name, *, width, depth, heads, kv_heads, mlp_dim, experts=0, every=2,
              image_budget=None):
    c = base_config()
    c.name = name
    v = c.model.vision  # ViT-H/14 (DFN-5B CLIP), 378 px: 27 x 27 patches + CLS, ~632M params
    v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim = 378, 14, 1280, 32, 16, 5120
    d = c.model.decoder
    d.width, d.depth, d.heads, d.kv_heads, d.head_dim, d.mlp_dim = width, depth, heads, kv_heads, 128, mlp_dim
    if experts:
        c.model.moe.num_experts, c.model.moe.every = experts, every
        c.mesh.shape = (1, -1, 1, 8)  # experts over an 8-way expert axis, the rest FSDP
    else:
        c.mesh.shape = (1, -1, 1, 1)  # pure FSDP (ZeRO-3)
    # Every block recomputed in the backward pass, no micro-batching: at 2-4 sequences per chip
    # that fits a v5p chip (`python -m mm1_jax.aot`; README "Pod fit"). On fewer chips raise
    # train.grad_accum first.
    c.model.remat = "full"
    c.train.grad_accum = 1
    # Share of image slots a chip encodes (config.py): what a chip's rows need depends on how
    # many it holds, so each config sets its own (BENCHMARKS.md "Image budget").
    c.model.image_budget = image_budget
    return c
