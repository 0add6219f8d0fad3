"""The device mesh, and the shardings of parameters and batches derived from the rules table.

Mesh axes are `config.MESH_AXES` = (data, fsdp, tensor, expert); `cfg.mesh.shape` gives their sizes,
one of which may be -1 (inferred from the device count). Every check here runs before anything is
compiled, so a wrong mesh or batch size fails in a second with the config key to change.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mm1_jax.config import MESH_AXES, ConfigError
from mm1_jax.sharding import logical_to_mesh

# Batch dimension of activations and inputs; the rules table maps it to every data-parallel axis.
BATCH_AXES = ("data", "fsdp", "expert")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills in the one -1 of `shape` so that the product is `num_devices`; ConfigError otherwise."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ConfigError(f"config.mesh.shape: {shape} must give one size per axis {MESH_AXES}")
    if sum(s == -1 for s in shape) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"config.mesh.shape: {shape}: sizes must be >= 1 with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh.shape: {dict(zip(MESH_AXES, shape))} cannot be completed: the fixed "
                f"axes multiply to {known}, which does not divide the {num_devices} devices")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(
            f"config.mesh.shape: {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
            f"{num_devices} are available; make the product {num_devices} or set one axis to -1")
    return shape


def make_mesh(cfg: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
    """The training mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(cfg.mesh.shape, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == jax.device_count():
        # jax.make_mesh orders devices for the physical topology (ICI rings on TPU).
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split (the product of the batch's mesh axes)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(cfg: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Batch size against the mesh, the process count and gradient accumulation."""
    b, accum, dp = cfg.train.batch_size, cfg.train.grad_accum, data_parallel_size(mesh)
    axes = " x ".join(f"{a}={mesh.shape[a]}" for a in BATCH_AXES)
    if b % (dp * accum):
        raise ConfigError(
            f"config.train.batch_size: {b} is not divisible by data parallelism ({axes} = {dp}) "
            f"x train.grad_accum ({accum}) = {dp * accum}; use a multiple of {dp * accum}")
    if b % jax.process_count():
        raise ConfigError(
            f"config.train.batch_size: {b} does not split over {jax.process_count()} processes")


def spec_for(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array with logical `names`, via the rules table.

    A mesh axis that does not divide its dimension is dropped for that dimension (the array is
    replicated along it instead): small configs on big meshes (2 kv heads over tensor=4) still run.
    """
    if names is None:
        return PartitionSpec()
    spec = logical_to_mesh(names, mesh_axes=mesh.axis_names)
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Inputs [B, ...]: the batch dimension over every data-parallel axis."""
    return NamedSharding(mesh, logical_to_mesh(("batch",) + (None,) * (ndim - 1),
                                               mesh_axes=mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
