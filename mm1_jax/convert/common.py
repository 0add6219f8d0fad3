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
