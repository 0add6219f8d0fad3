"""CLIP vision towers -> mm1_jax.models.vision.VisionEncoder: HF `CLIPVisionModel` / `CLIPModel`
and OpenCLIP (`visual.*`; MM1's DFN-5B ViT-H/14-378 is published in this layout).

Only the blocks the encoder keeps (up to `feature_layer`) are read; `post_layernorm` / `ln_post`
and the projection heads are not used by MM1 (the connector reads hidden states). When the
target resolution differs from the checkpoint's, the position grid is resized by PyTorch's
bicubic (`mm1_jax.models.layers.resize_pos_grid`), as timm and HF do.

Architectures come from the checkpoint's own config: HF `config.json` (`vision_config` inside a
CLIPModel's) or OpenCLIP's `open_clip_config.json` (`model_cfg.vision_cfg`).
"""

from __future__ import annotations

import math
from typing import Mapping

import ml_collections
import numpy as np

from mm1_jax.config import vision_grid
from mm1_jax.convert.stream import DictReader, Leaf, Reader, materialize
from mm1_jax.errors import CheckpointError
from mm1_jax.models.layers import resize_pos_grid
from mm1_jax.models.vision import num_blocks_used

# HF activation names -> ours.
_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
# OpenCLIP vision_cfg keys we implement when they hold these values (their defaults).
_OPENCLIP_DEFAULTS = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                      "pos_embed_type": "learnable", "qk_norm": False,
                      "scaled_cosine_attn": False, "scale_heads": False, "scale_attn": False,
                      "scale_fc": False, "block_type": None, "timm_model_name": None,
                      "norm_kwargs": {}, "act_kwargs": {}}


def hf_clip_arch(config: dict) -> dict:
    """HF CLIP `config.json` (CLIPVisionConfig, or CLIPConfig with `vision_config`) -> the
    architecture fields of `config.model.vision`."""
    c = config.get("vision_config", config)
    act = c.get("hidden_act", "quick_gelu")
    if act not in _ACTS:
        raise CheckpointError(f"config.json: hidden_act {act!r} is not supported (only {sorted(_ACTS)})")
    return {"image_size": c["image_size"], "patch_size": c["patch_size"], "width": c["hidden_size"],
            "depth": c["num_hidden_layers"], "heads": c["num_attention_heads"],
            "mlp_dim": c["intermediate_size"], "act": _ACTS[act],
            "norm_eps": c.get("layer_norm_eps", 1e-5)}


def openclip_arch(config: dict) -> dict:
    """OpenCLIP `open_clip_config.json` ({"model_cfg": {"vision_cfg": ...}}, or a bare model
    config) -> the architecture fields of `config.model.vision`. An option this encoder does not
    implement (layer scale, attentional pooling, qk-norm, ...) fails, naming it."""
    model = config.get("model_cfg", config)
    v = model["vision_cfg"]
    for key, default in _OPENCLIP_DEFAULTS.items():
        if key in v and v[key] != default:
            raise CheckpointError(f"open_clip_config.json: vision_cfg.{key}={v[key]!r} is not supported "
                                  f"by mm1_jax's VisionEncoder (only {default!r})")
    width = v.get("width", 768)
    head_width = v.get("head_width", 64)
    image_size, patch = v.get("image_size", 224), v.get("patch_size", 16)
    if isinstance(image_size, (list, tuple)) or isinstance(patch, (list, tuple)):
        raise CheckpointError("open_clip_config.json: non-square image_size / patch_size is not supported")
    return {"image_size": image_size, "patch_size": patch, "width": width,
            "depth": v.get("layers", 12), "heads": width // head_width,
            "mlp_dim": int(width * v.get("mlp_ratio", 4.0)),
            "act": "quick_gelu" if model.get("quick_gelu", False) else "gelu", "norm_eps": 1e-5}


def _pos_leaf(name: str, reader: Reader, cfg) -> Leaf:
    """CLS row + the grid, resized to this config's grid when the checkpoint's differs."""
    n, width = reader.shape(name)
    src_grid, grid = math.isqrt(n - 1), vision_grid(cfg.model.vision)
    if src_grid * src_grid != n - 1:
        raise CheckpointError(f"{name}: {n} positions are not CLS + a square grid")

    def fn(pos):
        pos = np.asarray(pos, np.float32)
        if src_grid == grid:
            return pos
        patch = resize_pos_grid(pos[1:].reshape(src_grid, src_grid, width), grid)
        return np.concatenate([pos[:1], patch.reshape(grid * grid, width)])

    return Leaf((grid * grid + 1, width), name, fn)


def _check_width(reader: Reader, conv_name: str, cfg) -> None:
    v = cfg.model.vision
    if reader.shape(conv_name) != (v.width, 3, v.patch_size, v.patch_size):
        raise CheckpointError(f"patch conv {reader.shape(conv_name)} does not match config width "
                              f"{v.width}, patch {v.patch_size}")


def _patch_kernel(conv):  # [d, 3, p, p] -> [p*p*3, d]: our patches are flattened (row, col, channel)
    conv = np.asarray(conv)
    return conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0])


def hf_clip_leaves(reader: Reader, cfg: ml_collections.ConfigDict) -> dict:
    """HF CLIP names (under `vision_model.`, or bare) -> {our path: Leaf}."""
    pre = "vision_model." if "vision_model.embeddings.class_embedding" in reader else ""
    name = lambda n: pre + n  # noqa: E731
    v = cfg.model.vision
    _check_width(reader, name("embeddings.patch_embedding.weight"), cfg)
    out = {
        ("patch_embed", "kernel"): Leaf((v.patch_size**2 * 3, v.width),
                                        name("embeddings.patch_embedding.weight"), _patch_kernel),
        ("cls",): Leaf((v.width,), name("embeddings.class_embedding")),
        ("pos_embed",): _pos_leaf(name("embeddings.position_embedding.weight"), reader, cfg),
        ("ln_pre", "scale"): Leaf((v.width,), name("pre_layrnorm.weight")),
        ("ln_pre", "bias"): Leaf((v.width,), name("pre_layrnorm.bias")),
    }
    L = range(num_blocks_used(cfg.model.vision))
    lin = {"q": ("self_attn.q_proj", v.width, v.width), "k": ("self_attn.k_proj", v.width, v.width),
           "v": ("self_attn.v_proj", v.width, v.width), "o": ("self_attn.out_proj", v.width, v.width),
           "fc1": ("mlp.fc1", v.width, v.mlp_dim), "fc2": ("mlp.fc2", v.mlp_dim, v.width)}
    for ours, (theirs, d_in, d_out) in lin.items():
        layer = lambda i, kind: name(f"encoder.layers.{i}.{theirs}.{kind}")  # noqa: E731
        out[("blocks", ours, "kernel")] = Leaf((len(L), d_in, d_out),
                                               [layer(i, "weight") for i in L], lambda w: np.asarray(w).T)
        out[("blocks", ours, "bias")] = Leaf((len(L), d_out), [layer(i, "bias") for i in L])
    for ours, theirs in {"ln_1": "layer_norm1", "ln_2": "layer_norm2"}.items():
        for kind, leaf in (("weight", "scale"), ("bias", "bias")):
            out[("blocks", ours, leaf)] = Leaf(
                (len(L), v.width), [name(f"encoder.layers.{i}.{theirs}.{kind}") for i in L])
    return out


def openclip_leaves(reader: Reader, cfg: ml_collections.ConfigDict) -> dict:
    """OpenCLIP names (`visual.conv1.weight`, `visual.transformer.resblocks.N.attn.in_proj_weight`,
    ...; `visual.` optional) -> {our path: Leaf}. The fused in_proj [3d, d] splits into q, k, v."""
    pre = "visual." if "visual.class_embedding" in reader else ""
    unknown = sorted(k for k in reader.keys() if k.startswith(pre) and any(
        s in k for s in (".ls_1", ".ls_2", "attn_pool", ".ln_q", ".ln_k", "ln_attn", "ln_inner")))
    if unknown:
        raise CheckpointError(f"OpenCLIP tensors of features mm1_jax's VisionEncoder does not have "
                              f"(layer scale, attentional pooling, qk-norm, ...): {unknown[:5]}")
    name = lambda n: pre + n  # noqa: E731
    v, d = cfg.model.vision, cfg.model.vision.width
    _check_width(reader, name("conv1.weight"), cfg)
    out = {
        ("patch_embed", "kernel"): Leaf((v.patch_size**2 * 3, d), name("conv1.weight"), _patch_kernel),
        ("cls",): Leaf((d,), name("class_embedding")),
        ("pos_embed",): _pos_leaf(name("positional_embedding"), reader, cfg),
        ("ln_pre", "scale"): Leaf((d,), name("ln_pre.weight")),
        ("ln_pre", "bias"): Leaf((d,), name("ln_pre.bias")),
    }
    L = range(num_blocks_used(cfg.model.vision))
    block = lambda i, n: name(f"transformer.resblocks.{i}.{n}")  # noqa: E731
    for j, ours in enumerate("qkv"):
        rows = slice(j * d, (j + 1) * d)
        out[("blocks", ours, "kernel")] = Leaf(
            (len(L), d, d), [block(i, "attn.in_proj_weight") for i in L],
            lambda w, rows=rows: np.asarray(w[rows]).T)
        out[("blocks", ours, "bias")] = Leaf(
            (len(L), d), [block(i, "attn.in_proj_bias") for i in L], lambda b, rows=rows: b[rows])
    lin = {"o": ("attn.out_proj", d, d), "fc1": ("mlp.c_fc", d, v.mlp_dim),
           "fc2": ("mlp.c_proj", v.mlp_dim, d)}
    for ours, (theirs, d_in, d_out) in lin.items():
        out[("blocks", ours, "kernel")] = Leaf(
            (len(L), d_in, d_out), [block(i, f"{theirs}.weight") for i in L], lambda w: np.asarray(w).T)
        out[("blocks", ours, "bias")] = Leaf((len(L), d_out), [block(i, f"{theirs}.bias") for i in L])
    for ln in ("ln_1", "ln_2"):
        for kind, leaf in (("weight", "scale"), ("bias", "bias")):
            out[("blocks", ln, leaf)] = Leaf((len(L), d), [block(i, f"{ln}.{kind}") for i in L])
    return out


def clip_vision_params(sd: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict) -> dict:
    """An in-memory HF CLIP state dict -> {path: float32 array} (load with `common.load_params`)."""
    reader = DictReader(sd)
    return materialize(hf_clip_leaves(reader, cfg), reader)
