"""Loading converted weights into an instantiated module, with clear errors on mismatches."""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

Path = tuple


def load_params(module: nnx.Module, params: Mapping, *, strict: bool = True) -> None:
    """Assigns `params` to `module`'s nnx.Params in place.

    `params` is {parameter path tuple: array} or a nested dict shaped like the module's state.
    Every converted array must match an existing parameter's shape; with `strict`, every
    parameter of the module must be provided. Errors name the offending paths and shapes.
    """
    if any(isinstance(v, Mapping) for v in params.values()):
        params = traverse_util.flatten_dict(dict(params))
    state = nnx.state(module, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    unknown = sorted(set(params) - set(flat), key=str)
    if unknown:
        raise ValueError(f"converted parameters with no counterpart in the model: {unknown[:10]}")
    missing = sorted(set(flat) - set(params), key=str)
    if strict and missing:
        raise ValueError(f"model parameters the checkpoint does not provide: {missing[:10]}")
    for path, value in params.items():
        var = flat[path]
        if tuple(var.shape) != tuple(value.shape):
            raise ValueError(f"shape mismatch at {'/'.join(map(str, path))}: checkpoint "
                             f"{tuple(value.shape)} != model {tuple(var.shape)}; does the config "
                             "match the checkpoint?")
        var.value = jnp.asarray(value, dtype=var.value.dtype)
    nnx.update(module, state)


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stacks per-layer arrays on the leading "layers" axis the scanned modules use."""
    return np.stack([np.asarray(a) for a in arrays], axis=0)


# ------------------------------------------------------------------ converted checkpoints
# A converted component is a directory holding
#   state/       an Orbax PyTree checkpoint {"params": {component: parameters}}, the same tree a
#                run's `<workdir>/checkpoints/<step>/state` holds (so `init_from` reads either);
#   model.json   {"component", "source", "architecture", "model": {section: {field: value}}}:
#                the config fields the parameters were converted for (ARCH_FIELDS).
# The fields of each config section that fix a component's parameters or their meaning; a run
# that starts from a converted component must agree on every one of them.
ARCH_FIELDS = {
    "vision": ("image_size", "patch_size", "width", "depth", "heads", "mlp_dim", "act", "norm_eps",
               "feature_layer"),
    "connector": ("kind", "num_tokens", "hidden", "depth", "mlp_depth", "se_ratio", "attn_heads"),
    "decoder": ("vocab_size", "real_vocab_size", "width", "depth", "heads", "kv_heads", "head_dim",
                "mlp_dim", "rope_theta", "norm_eps", "tie_embeddings", "attn_bias"),
    "moe": ("num_experts", "every", "top_k", "expert_mlp_dim"),
}
# Which config sections describe each component.
SECTIONS = {"vision": ("vision",), "connector": ("connector",), "decoder": ("decoder", "moe")}
