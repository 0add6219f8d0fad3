"""Honeybee (kakaobrain/honeybee) C-Abstractor checkpoints -> mm1_jax `CAbstractor` parameters.

Honeybee names (under `abstractor.` in a full HoneybeeForConditionalGeneration state dict):
  pos_emb                                 [1, p(+1), v]   -> pos_emb [p, v] (an old CLS row dropped)
  net.{0,2}.b{i}.conv{j}.conv.weight      [o, i/g, kh, kw]
                                   -> stage{1,2}.blocks.{i-1}.conv{j}.conv.kernel [kh, kw, i/g, o]
  net.{0,2}.b{i}.conv{j}.bn.{weight,bias} [o]             -> ...conv{j}.norm.{scale,bias}
  net.{0,2}.b{i}.downsample.{conv,bn}.*                   -> ...shortcut.{conv,norm}.*
  net.{0,2}.b{i}.se.fc{1,2}.{weight,bias} [o, i, 1, 1]    -> ...se.fc{j}.{kernel [i, o], bias}
  readout.{2m}.{weight,bias}              [o, i]          -> readout.{m}.{kernel [i, o], bias}
(`net.1` is the parameter-free AdaptiveAvgPool2d; with depth 0 `net` is that pool alone.)
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import ml_collections
import numpy as np
from flax import traverse_util

_PREFIX = "abstractor."
_BLOCK = re.compile(
    r"net\.([02])\.b(\d+)\.(conv[123]|downsample|se)\.(conv|bn|fc1|fc2)\.(weight|bias)$")
_READOUT = re.compile(r"readout\.(\d+)\.(weight|bias)$")
_NORM = {"weight": "scale", "bias": "bias"}
_STAGE = {"0": "stage1", "2": "stage2"}


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Torch tensors (any dtype, any device) or arrays -> float32 numpy, without importing torch."""
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # torch.Tensor; bf16 has no numpy dtype, so go via float32
            value = value.detach().float().cpu().numpy()
        out[key] = np.asarray(value, np.float32)
    return out


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # torch OIHW -> HWIO


def cabstractor_params_from_torch(state_dict: Mapping[str, np.ndarray],
                                  cfg: ml_collections.ConfigDict) -> dict:
    """Honeybee C-Abstractor state dict -> nested dict shaped like `nnx.state(CAbstractor, Param)`.

    Load the result with `mm1_jax.convert.common.load_params`.

    Accepts the abstractor's own state dict or a full Honeybee model's (keys under
    `abstractor.`). Raises ValueError naming any key it cannot place (e.g. `eos_tokens` or
    `prenorm`, which MM1's connector does not have) and any missing readout layer.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    if any(k.startswith(_PREFIX) for k in sd):
        sd = {k[len(_PREFIX):]: v for k, v in sd.items() if k.startswith(_PREFIX)}
    flat: dict[tuple, np.ndarray] = {}
    unknown = []
    for key, w in sd.items():
        if key == "pos_emb":
            pe = w.reshape(-1, w.shape[-1])
            grid_p = (cfg.model.vision.image_size // cfg.model.vision.patch_size) ** 2
            if pe.shape[0] == grid_p + 1:  # Honeybee's old checkpoints kept a CLS row first
                pe = pe[1:]
            flat[("pos_emb",)] = pe
        elif m := _BLOCK.match(key):
            stage, idx, part, sub, kind = m.groups()
            base = (_STAGE[stage], "blocks", int(idx) - 1)
            if part == "se":
                leaf = w.reshape(w.shape[0], -1).T if kind == "weight" else w
                flat[base + ("se", sub, "kernel" if kind == "weight" else "bias")] = leaf
            else:
                part = "shortcut" if part == "downsample" else part
                if sub == "conv":
                    flat[base + (part, "conv", "kernel")] = _conv_kernel(w)
                else:
                    flat[base + (part, "norm", _NORM[kind])] = w
        elif m := _READOUT.match(key):
            pos, kind = int(m.group(1)), m.group(2)
            if pos % 2:
                unknown.append(key)  # odd positions are SiLU, which has no parameters
                continue
            flat[("readout", pos // 2, "kernel" if kind == "weight" else "bias")] = (
                w.T if kind == "weight" else w)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Honeybee checkpoint keys with no place in mm1_jax's CAbstractor: "
                         f"{sorted(unknown)}; only pos_emb, net.* and readout.* are supported "
                         "(no eos_tokens / prenorm)")
    n_readout = len({p[1] for p in flat if p[0] == "readout"})
    if n_readout != cfg.model.connector.mlp_depth:
        raise ValueError(f"checkpoint has {n_readout} readout Linear layers but "
                         f"config.model.connector.mlp_depth = {cfg.model.connector.mlp_depth}")
    return traverse_util.unflatten_dict(flat)
