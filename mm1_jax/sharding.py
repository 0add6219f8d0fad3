"""The one table that maps the model's logical axis names to mesh axes.

Every parameter is created with logical names (`sharding_names=("embed", "mlp")`); nothing in
`mm1_jax/models/` names a mesh axis. Changing how a model is parallelised means editing this table.

Logical axes: batch, seq (activations); vocab, embed, mlp, heads, kv_heads, head_dim, layers,
exp (experts), conv (connector channels). Mesh axes: data, fsdp, tensor, expert (config.MESH_AXES).
"""

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Activations: the batch is split over every data-parallel axis, experts included
    # (outside MoE layers the expert axis acts as data parallelism).
    ("batch", ("data", "fsdp", "expert")),
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
    from jax.sharding import PartitionSpec

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

    Meshes are built with AxisType.Auto (mm1_jax.train); models call this on activations at
    module boundaries so the compiler keeps the intended layout. Without them, under FSDP the
    compiler may follow a weight's sharding instead of the batch's and hold an activation at
    the size of the global batch on every chip (tests/test_layout.py measures this); on one
    device (tests, inspect) nothing happens.
    """
    import jax

    import math

    from jax.sharding import PartitionSpec

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    # A mesh axis that does not divide its dimension is dropped (replicated along it), as for
    # parameters: one image or one prompt on an 8-way mesh still compiles.
    out = []
    for dim, axes in zip(x.shape, logical_to_mesh(names, mesh_axes=mesh.axis_names)):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*out))
