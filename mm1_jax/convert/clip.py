"""HF `CLIPVisionModel` (OpenAI CLIP, DFN, ...) state dict -> mm1_jax.models.vision.VisionEncoder.

Only the blocks the encoder keeps (up to `feature_layer`) are read; `post_layernorm` and the
projection heads are not used by MM1 (the connector reads hidden states).
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np

from mm1_jax.convert.common import stack
from mm1_jax.models.vision import num_blocks_used


def clip_vision_params(sd: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict) -> dict:
    """sd: HF names (optionally prefixed `vision_model.`), numpy arrays -> {path: array}."""
    sd = {k.removeprefix("vision_model."): np.asarray(v, np.float32) for k, v in sd.items()}
    v = cfg.model.vision
    conv = sd["embeddings.patch_embedding.weight"]  # [d, 3, p, p]
    if conv.shape != (v.width, 3, v.patch_size, v.patch_size):
        raise ValueError(f"patch conv {conv.shape} does not match config width {v.width}, "
                         f"patch {v.patch_size}")
    out = {
        # Our patches are flattened (row, col, channel).
        ("patch_embed", "kernel"): conv.transpose(2, 3, 1, 0).reshape(-1, v.width),
        ("cls",): sd["embeddings.class_embedding"],
        ("pos_embed",): sd["embeddings.position_embedding.weight"],
        ("ln_pre", "scale"): sd["pre_layrnorm.weight"],
        ("ln_pre", "bias"): sd["pre_layrnorm.bias"],
    }
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    layers = range(num_blocks_used(v))
    for ours, theirs in names.items():
        out[("blocks", ours, "kernel")] = stack(
            [sd[f"encoder.layers.{i}.{theirs}.weight"].T for i in layers])
        out[("blocks", ours, "bias")] = stack([sd[f"encoder.layers.{i}.{theirs}.bias"] for i in layers])
    for ours, theirs in {"ln_1": "layer_norm1", "ln_2": "layer_norm2"}.items():
        out[("blocks", ours, "scale")] = stack([sd[f"encoder.layers.{i}.{theirs}.weight"] for i in layers])
        out[("blocks", ours, "bias")] = stack([sd[f"encoder.layers.{i}.{theirs}.bias"] for i in layers])
    return out
