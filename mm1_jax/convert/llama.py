"""HF `LlamaForCausalLM` state dict -> mm1_jax.models.decoder.Decoder (dense configs).

HF stores q/k projections already permuted for the half-rotation RoPE layout our `rope` uses,
so no re-permutation is needed.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np

from mm1_jax.convert.common import stack


def llama_params(sd: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict) -> dict:
    """sd: HF names (`model.layers.0.self_attn.q_proj.weight`, ...) -> {path: array}."""
    d = cfg.model.decoder
    if cfg.model.moe.num_experts:
        raise ValueError("llama_params converts dense decoders; this config has model.moe.num_experts > 0")
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    layer = lambda i, name: sd[f"model.layers.{i}.{name}"]  # noqa: E731
    L = range(d.depth)
    out = {
        ("embed",): sd["model.embed_tokens.weight"],
        ("final_norm", "scale"): sd["model.norm.weight"],
    }
    blk = ("periods", "blocks", 0)
    out[blk + ("attn", "wq")] = stack([layer(i, "self_attn.q_proj.weight").T.reshape(d.width, d.heads, d.head_dim) for i in L])
    out[blk + ("attn", "wk")] = stack([layer(i, "self_attn.k_proj.weight").T.reshape(d.width, d.kv_heads, d.head_dim) for i in L])
    out[blk + ("attn", "wv")] = stack([layer(i, "self_attn.v_proj.weight").T.reshape(d.width, d.kv_heads, d.head_dim) for i in L])
    out[blk + ("attn", "wo")] = stack([layer(i, "self_attn.o_proj.weight").T.reshape(d.heads, d.head_dim, d.width) for i in L])
    out[blk + ("attn_norm", "scale")] = stack([layer(i, "input_layernorm.weight") for i in L])
    out[blk + ("ffn_norm", "scale")] = stack([layer(i, "post_attention_layernorm.weight") for i in L])
    for ours, theirs in {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}.items():
        out[blk + ("ffn", ours, "kernel")] = stack([layer(i, f"mlp.{theirs}.weight").T for i in L])
    if not d.tie_embeddings:
        out[("lm_head", "kernel")] = sd["lm_head.weight"].T
    return out
