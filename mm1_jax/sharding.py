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
