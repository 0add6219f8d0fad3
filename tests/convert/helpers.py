"""Tiny random PyTorch reference models saved the way their libraries save them, and the one
place these tests build our modules."""

from __future__ import annotations

import importlib
import json
import os
import sys
import types

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mm1_jax.convert.common import load_params
from mm1_jax.convert.export import flat
from mm1_jax.convert.init_from import source_model_config


def build(component: str, cfg):
    """Our module for `component` (the only constructor call site of these tests)."""
    from mm1_jax.models.mm1 import COMPONENTS

    return COMPONENTS[component](cfg.model, nnx.Rngs(0))


def restored(out: str, component: str) -> dict:
    """{path tuple: numpy} of a converted directory's parameters (keys as the model's)."""
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(os.path.join(os.path.abspath(out), "state"))
    return {tuple(int(k) if k.isdigit() else k for k in p.split("/")): np.asarray(v)
            for p, v in flat(tree["params"][component]).items()}


def load_converted(out: str, component: str, base):
    """Our module built from the converted directory's own model.json, with its parameters."""
    cfg = base
    cfg.model.dtype = "float32"
    for section, fields in source_model_config(out).items():
        cfg.model[section].update(fields)
    module = build(component, cfg)
    load_params(module, restored(out, component))
    return module, cfg


def save_hf(model, directory: str) -> str:
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def open_clip_transformer():
    """open_clip's own `VisionTransformer` class, imported without the package __init__.

    open-clip-torch imports torchvision at package import, and the only torchvision wheels for
    torch 2.13 are CUDA builds that cannot load next to the CPU torch of the test env. The
    module defining the vision tower needs torchvision only for `FrozenBatchNorm2d` (unused by
    a ViT), so a stand-in for that one name is registered and the package's __init__ skipped.
    """
    if "open_clip.transformer" in sys.modules:
        return sys.modules["open_clip.transformer"].VisionTransformer
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        return None
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:
            for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc"):
                sys.modules[name] = types.ModuleType(name)
            sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
            sys.modules.pop("open_clip", None)
    if "open_clip" not in sys.modules or not hasattr(sys.modules["open_clip"], "__path__"):
        pkg = types.ModuleType("open_clip")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["open_clip"] = pkg
    return importlib.import_module("open_clip.transformer").VisionTransformer


def save_open_clip(visual, model_cfg: dict, directory: str) -> str:
    """A state dict under `visual.` in `open_clip_model.safetensors` + `open_clip_config.json`,
    as OpenCLIP checkpoints are published on the Hugging Face hub."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    sd = {f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}
    save_file(sd, os.path.join(directory, "open_clip_model.safetensors"))
    with open(os.path.join(directory, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg}, f)
    return directory
