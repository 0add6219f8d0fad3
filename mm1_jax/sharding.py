"""The one table that maps the model's logical axis names to mesh axes, the device mesh, and the
shardings of parameters and batches derived from them.

Every parameter is created with logical names (`sharding_names=("embed", "mlp")`); nothing in
`mm1_jax/models/` names a mesh axis. Changing how a model is parallelised means editing this table.
Mesh axes are `config.MESH_AXES` = (data, fsdp, tensor, expert); `cfg.mesh.shape` gives their
sizes, one of which may be -1 (inferred from the device count).

Logical axes: batch, seq (activations); vocab, embed, mlp, heads, kv_heads, head_dim, layers,
exp (experts), conv (connector channels). Mesh axes: data, fsdp, tensor, expert (config.MESH_AXES).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mm1_jax.config import BATCH_MESH_AXES, MESH_AXES, ConfigError

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Activations: the batch is split over every data-parallel axis, experts included
    # (outside MoE layers the expert axis acts as data parallelism).
    ("batch", BATCH_MESH_AXES),
    ("seq", None),
    # Parameters: FSDP shards the model dimension; tensor parallelism shards the wide one.
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("exp", "expert"),
    ("head_dim", None),
    ("layers", None),
    ("conv", None),
)


def logical_to_mesh(names, rules=LOGICAL_RULES, mesh_axes=None):
    """PartitionSpec for logical `names`.

    Mesh axes absent from `mesh_axes` are dropped, and so is a mesh axis an earlier dimension
    already uses (an activation [batch, seq, embed] shards batch over fsdp, so embed stays whole).
    """
    table = dict(rules)
    out, used = [], set()
    for name in names:
        axes = table.get(name) if name is not None else None
        if isinstance(axes, str):
            axes = (axes,)
        axes = tuple(a for a in (axes or ()) if a not in used
                     and (mesh_axes is None or a in mesh_axes))
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*out)


def constrain(x, names):
    """with_sharding_constraint by logical names; a no-op outside a mesh context.

    Meshes are built with AxisType.Auto (`make_mesh`); models call this on activations at layer
    boundaries (e.g. the MoE dispatch tensor) so the compiler keeps the intended layout; on one
    device (tests, summaries) nothing happens. A mesh axis that does not divide its dimension is
    left out for that dimension (`spec_for`): an evaluation batch of 4 rows on 8 devices stays
    whole rather than failing.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec_for(x.shape, names, mesh))


def batch_shards(rows: int) -> int:
    """How many pieces `constrain(x, ("batch", ...))` splits `rows` rows into under the current
    mesh (the batch's mesh axes that divide `rows`); 1 outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1
    axes = spec_for((rows,), ("batch",), mesh)[0]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(dict(mesh.shape)[a] for a in axes)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills in the one -1 of `shape` so that the product is `num_devices`; ConfigError otherwise."""
    shape = tuple(int(s) for s in shape)  # its form was checked by config.validate
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


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[Any] | None = None) -> Mesh:
    """The mesh of sizes `mesh_shape` (`cfg.mesh.shape`) over `devices` (default: all devices
    of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == jax.device_count() or devices[0].platform == "tpu":
        # jax.make_mesh orders devices for the physical topology (ICI rings on TPU; also the
        # compile-only devices of a TPU topology, mm1_jax.aot).
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def axes_size(mesh, axes: str | tuple[str, ...] | None) -> int:
    """Devices along the mesh axis (or axes) `axes` of a PartitionSpec entry; 1 for None."""
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(dict(mesh.shape)[a] for a in axes)


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split (the product of the batch's mesh axes)."""
    return math.prod(mesh.shape[a] for a in BATCH_MESH_AXES)


def spec_for(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for an array with logical `names`, via the rules table.

    A mesh axis that does not divide its dimension is dropped for that dimension (the array is
    replicated along it instead): small configs on big meshes (2 kv heads over tensor=4) still run.
    """
    if names is None:
        return PartitionSpec()
    spec = logical_to_mesh(names, mesh_axes=mesh.axis_names)
    sizes = dict(mesh.shape)  # a Mesh or an AbstractMesh
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        while axes and dim % math.prod(sizes[a] for a in axes):
            axes = axes[:-1]
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Inputs [B, ...]: the batch dimension over every data-parallel axis."""
    return NamedSharding(mesh, logical_to_mesh(("batch",) + (None,) * (ndim - 1),
                                               mesh_axes=mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def mesh_of(tree) -> Mesh | None:
    """The mesh the arrays of `tree` live on (the first NamedSharding found), or None."""
    for leaf in jax.tree.leaves(tree):
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding):
            return sh.mesh
    return None


def to_mesh_inputs(tree, mesh: Mesh | None):
    """Host inputs (numpy) for a jitted function whose parameters live on `mesh`: with several
    processes, global arrays replicated over the mesh (every process holds the same inputs:
    evaluation prompts are the same on all of them); with one, the arrays as they are."""
    if mesh is None or jax.process_count() == 1:
        return tree
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(replicated(mesh), np.asarray(x)), tree)


def to_host(x) -> np.ndarray:
    """A (small) result back on every host: generated token ids, summed log-likelihoods."""
    if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def param_shardings(params, names: dict[str, Any], mesh: Mesh):
    """NamedSharding of every parameter (a nested dict keyed like the model's state) from its
    logical axis names (`names`: "/"-joined path -> names) through the rules table."""
    def one(path, x):
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return NamedSharding(mesh, spec_for(x.shape, names.get(key), mesh))

    return jax.tree_util.tree_map_with_path(one, params)
