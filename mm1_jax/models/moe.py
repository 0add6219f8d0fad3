"""GShard-style top-k mixture-of-experts feed-forward layer (MM1 section 4: top-2, 32 or 64 experts).

Each expert is a SwiGLU FFN like the dense Llama FFN: y_e = (silu(x W0_e) * (x W1_e)) Wo_e.
A float32 router picks each token's top-k experts; the chosen gates are renormalised to sum to 1.
Two execution paths, selected by `cfg.model.moe.mode`:

- "capacity" (GShard, Lepikhin et al. 2020): tokens are split into groups; every expert takes at
  most C = ceil(top_k * capacity_factor * tokens_per_group / E) tokens per group. A token's slot
  in an expert's buffer comes from a cumulative sum in which every first choice precedes every
  second choice, so under pressure second choices drop before first choices. Dispatch is by
  indices: kept tokens are gathered into expert-major buffers [E, G, C, D], which shard as the
  rules table splits the logical `exp` axis (the compiler inserts the all-to-alls), and each
  token gathers its experts' outputs back, weighted by its gates. No one-hot [tokens, experts,
  capacity] tensor is built, so the layer costs what its matmuls cost
  (benchmarks/moe_layer.py). A dropped assignment contributes 0; a token whose choices all drop
  outputs 0 and is carried by the residual.
- "dropless": (token, choice) assignments are sorted by expert and the expert matmuls run as
  grouped matmuls over the per-expert counts; nothing is dropped. Where the mesh splits the
  experts (the rules table's `exp` axis) the path is expert-parallel under `shard_map`: each
  device keeps its experts' weights, and tokens travel to their experts and back by all-to-all
  (`_expert_parallel`).

The grouped matmul, `Kernels.grouped_matmul` (mm1_jax/models/kernels.py; start-up resolves it
from `cfg.model.moe.grouped_matmul`):
- "xla": `jax.lax.ragged_dot`. XLA:CPU lowers it to a masked dense dot costing E times the
  FLOPs (benchmarks/results/moe.md); XLA:GPU has a grouped kernel.
- "megablox": JAX's Pallas TPU grouped matmul (`jax.experimental.pallas.ops.tpu.megablox.gmm`,
  its backward the kernel's own transposed and weight-gradient `tgmm` calls). The kernel sees
  one device's rows: on a mesh without an expert split the layer runs under `shard_map` over
  the batch axes, each device with every expert's weights. With `Kernels.interpret` (CPU) it
  runs in Pallas interpret mode (slow; for tests). Its grid runs over the tiles of filled groups only (a count known at
  run time), so rows past the groups, such as the empty tail of the expert-parallel receive
  buffers, cost no FLOPs; its cost estimate, which `cost_analysis()` reports, counts them.
"auto" is megablox on TPU, xla elsewhere (libtpu runs "xla"'s ragged_dot as its own kernel, but
on a mesh without an expert split GSPMD gives every chip all the rows: BENCHMARKS.md).

Inference (`train=False`: generation, perplexity, evaluation) always takes the dropless path,
whatever the mode: capacity couples the rows of a batch (they compete for the same slots), and a
row generated in a batch must equal the row generated alone.

Groups never span two rows: each row's S tokens are split into ceil(S / group_size) groups as
even as possible (a group_size above S makes the row one group), each row padded with fewer
masked tokens than it has groups. A row is what the batch splits on, so the groups split with
the batch on every mesh and route the same on every mesh. (Groups of the flattened batch, as
before, spanned chips where a chip held fewer than group_size tokens: the compiled backward then
all-gathered every group's expert buffers onto each chip, 42 MB per chip at 16 chips in
benchmarks/layout_memory.py, growing with the chip count.) The MM1 configs' rows are 4,096
tokens, their group_size.

Padding (mask False) is never routed: it takes no capacity, counts in no statistic or loss,
and its output is 0.

Aux losses are returned UNWEIGHTED, per layer, in `stats`:
  load_balance_loss = E * sum_e f_e * P_e (GShard / Switch), f_e = fraction of real tokens whose
    first choice is e, P_e = mean router probability of e over real tokens; 1 when balanced.
  z_loss = mean over real tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al. 2022).
The decoder AVERAGES each over its MoE layers and then multiplies by `load_balance_coef` /
`z_loss_coef`, so a coefficient means the same thing at any depth or `every`.

Einsum legend: g groups, s tokens per group, t tokens (flat), k choices (top-k), e experts,
c capacity slot, m model width (D), h expert hidden width (F).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.experimental.pallas.ops.tpu.megablox import gmm as megablox_gmm
from jax.sharding import PartitionSpec

from mm1_jax import sharding
from mm1_jax.models import layers
from mm1_jax.models.kernels import PORTABLE, Kernels
from mm1_jax.sharding import constrain, spec_for

# megablox tile sizes (rows, contraction, output), each capped at its dimension; rows pad to a
# multiple of the row tile.
MEGABLOX_TILES = (512, 1024, 1024)


def group_shape(num_tokens: int, group_size: int) -> tuple[int, int]:
    """(groups, tokens per group) for `num_tokens` tokens; groups * size - num_tokens < groups."""
    groups = -(-num_tokens // max(1, min(group_size, num_tokens)))
    return groups, -(-num_tokens // groups)


def row_groups(x: jax.Array, rows: int, group_size: int, fill) -> jax.Array:
    """[T, ...] -> [rows * g, s, ...]: each of the `rows` rows of the token axis in
    `group_shape(T / rows, group_size)` groups, padded with `fill` at the end of the row
    (module doc: a group never spans two rows)."""
    per = x.shape[0] // rows
    g, s = group_shape(per, group_size)
    x = x.reshape(rows, per, *x.shape[1:])
    x = jnp.pad(x, ((0, 0), (0, g * s - per)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)
    return x.reshape(rows * g, s, *x.shape[2:])


def capacity(tokens_per_group: int, num_experts: int, top_k: int, factor: float) -> int:
    """GShard expert capacity per group; never above the group size (an expert sees a token once)."""
    return max(1, min(tokens_per_group, math.ceil(top_k * factor * tokens_per_group / num_experts)))


class MoEFeedForward(nnx.Module):
    """Top-k routed SwiGLU experts. `__call__(x [B,S,D], mask [B,S]) -> (y [B,S,D], stats)`.

    y is in the compute dtype (`cfg.model.dtype`), like `layers.Linear`; stats are float32.
    """

    def __init__(self, m: ml_collections.ConfigDict, *, width: int, mlp_dim: int, dtype,
                 param_dtype, rngs: nnx.Rngs, kernels: Kernels = PORTABLE):
        """m: `cfg.model.moe`; width: the decoder width D; mlp_dim: each expert's hidden F;
        kernels: the grouped matmul of the dropless path."""
        d, f, e = width, mlp_dim, m.num_experts
        self.dtype, pdt = dtype, param_dtype
        self.num_experts, self.top_k = e, m.top_k
        self.mode, self.group_size = m.mode, m.group_size
        self.capacity_factor = m.capacity_factor
        self.kernels = kernels
        # fan_in is D for wi and F for wo; the leading expert axis is a batch axis, not a fan.
        expert_init = nnx.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=2, batch_axis=(0,))
        self.router = layers.param(rngs, nnx.initializers.lecun_normal(), (d, e),
                                   ("embed", None), pdt)
        self.wi_0 = layers.param(rngs, expert_init, (e, d, f), ("exp", "embed", "mlp"), pdt)
        self.wi_1 = layers.param(rngs, expert_init, (e, d, f), ("exp", "embed", "mlp"), pdt)
        self.wo = layers.param(rngs, expert_init, (e, f, d), ("exp", "mlp", "embed"), pdt)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = True
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        b, s, d = x.shape
        mask = jnp.ones((b, s), bool) if mask is None else mask.astype(bool)
        xt, mt = x.reshape(b * s, d), mask.reshape(b * s)
        top_i, gates, stats = self._route(xt, mt)
        if self.mode == "dropless" or not train:
            # Inference (generation, perplexity, evaluation) never drops: with capacity, a row's
            # tokens would compete with other rows' for expert slots, so a batched row could
            # differ from the same row alone.
            y = self._dropless(xt, mt, top_i, gates)
            stats["dropped_fraction"] = jnp.zeros((), jnp.float32)
        else:
            y, kept = self._capacity(xt, mt, top_i, gates, self.capacity_factor, rows=b)
            n_assign = mt.sum().astype(jnp.float32) * self.top_k
            stats["dropped_fraction"] = (n_assign - kept) / jnp.maximum(n_assign, 1.0)
        return y.reshape(b, s, d), stats

    # ------------------------------------------------------------------ router (float32)

    def _route(self, x: jax.Array, mask: jax.Array):
        """x: [t, m], mask: [t] -> top_i [t, k] int, gates [t, k] f32 (0 on padding), stats."""
        e, k = self.num_experts, self.top_k
        logits = jnp.einsum("tm,me->te", x.astype(jnp.float32),
                            self.router[...].astype(jnp.float32))
        probs = jax.nn.softmax(logits, axis=-1)
        top_p, top_i = jax.lax.top_k(probs, k)
        gates = top_p / top_p.sum(-1, keepdims=True) * mask[:, None]

        real = mask.astype(jnp.float32)
        n_real = jnp.maximum(real.sum(), 1.0)
        choice = jax.nn.one_hot(top_i, e, dtype=jnp.float32) * real[:, None, None]  # [t, k, e]
        first_frac = choice[:, 0].sum(0) / n_real
        mean_prob = (probs * real[:, None]).sum(0) / n_real
        z = jax.nn.logsumexp(logits, axis=-1)
        stats = {
            "load_balance_loss": e * jnp.sum(first_frac * mean_prob),
            "z_loss": jnp.sum(jnp.square(z) * real) / n_real,
            "expert_load": choice.sum((0, 1)) / (n_real * k),
        }
        return top_i, gates, stats

    # ------------------------------------------------------------------ experts

    def _experts(self, xe: jax.Array, spec_in) -> jax.Array:
        """Expert-major SwiGLU: xe [e, g, c, m] -> [e, g, c, m] in the compute dtype.

        Groups and slots merge into one row axis (groups major, so the split over groups
        stays): one batched matmul per expert, which XLA:CPU runs ~1.7x faster than the 4-D
        contraction; `layers.swiglu` with its written-out backward."""
        e, g, c, d = xe.shape
        w = (p[...].astype(self.dtype) for p in (self.wi_0, self.wi_1, self.wo))
        y = layers.swiglu(xe.reshape(e, g * c, d), *w)
        return constrain(y.reshape(e, g, c, d), spec_in)

    def _capacity(self, x, mask, top_i, gates, factor, rows):
        """GShard capacity routing by indices. Returns (y [t, m], number of kept assignments).
        `rows`: the rows the token axis holds (module doc: groups).

        Every (token, choice) assignment gets a slot in its expert's buffer; kept assignments
        are gathered into expert-major buffers [e, g, c, m], the experts run, and each token
        gathers its outputs back. No [tokens, experts, capacity] or [tokens, experts] tensor is
        built: the slots come from a stable sort of the assignments by expert.
        """
        t, d = x.shape
        e, k = self.num_experts, self.top_k
        groups = functools.partial(row_groups, rows=rows, group_size=self.group_size)
        x, top_i, gates = groups(x, fill=0), groups(top_i, fill=0), groups(gates, fill=0)
        mask = groups(mask, fill=False)
        g, s = mask.shape
        cap = capacity(s, e, k, factor)

        # A stable sort of the assignments by expert, in choice-major order: the slot of (token,
        # choice j) = assignments to that expert from all choices < j in the group, plus earlier
        # tokens' choice j. First choices fill first. Padding gets the id E and sorts last.
        by_choice = jnp.where(mask[..., None], top_i, e).transpose(0, 2, 1).reshape(g, k * s)
        slot = jax.vmap(functools.partial(_rank_within_expert, num_experts=e))(by_choice)
        slot = slot.reshape(g, k, s).transpose(0, 2, 1)  # [g, s, k]
        keep = mask[..., None] & (slot < cap)  # [g, s, k]
        # Flat position of each assignment in its group's [e * c] buffer; e * c = dropped.
        pos = jnp.where(keep, top_i * cap + slot, e * cap).reshape(g, s * k)
        token = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[:, None], (s, k)).reshape(s * k)
        # Buffer slot -> the token it holds; an empty slot points at the zero row s.
        source = jax.vmap(lambda p: jnp.full((e * cap,), s, jnp.int32).at[p].set(
            token, mode="drop", unique_indices=True))(pos)  # [g, e * c]

        xg = constrain(jnp.pad(x.astype(self.dtype), ((0, 0), (0, 1), (0, 0))),
                       ("batch", None, "embed"))
        xe = jnp.take_along_axis(xg, source[..., None], axis=1)  # [g, e * c, m]
        spec_in = ("exp", "batch", None, "embed")
        xe = constrain(xe.reshape(g, e, cap, d).transpose(1, 0, 2, 3), spec_in)
        ye = self._experts(xe, spec_in)
        ye = constrain(ye.transpose(1, 0, 2, 3).reshape(g, e * cap, d), ("batch", None, "embed"))
        yk = jnp.take_along_axis(ye, jnp.minimum(pos, e * cap - 1)[..., None], axis=1)
        w = (gates * keep).astype(self.dtype)  # a dropped assignment contributes 0
        y = jnp.einsum("gskm,gsk->gsm", yk.reshape(g, s, k, d), w)
        y = constrain(y, ("batch", None, "embed"))
        y = y.reshape(rows, g // rows * s, d)[:, :t // rows]
        return y.reshape(t, d), keep.sum().astype(jnp.float32)

    def _dropless(self, x, mask, top_i, gates):
        """Every assignment runs; expert-parallel when the rules table splits the logical `exp`
        axis over a mesh axis of this mesh that divides the experts. y: [t, m]."""
        mesh = jax.sharding.get_abstract_mesh()
        w = tuple(p[...].astype(self.dtype) for p in (self.wi_0, self.wi_1, self.wo))
        x = x.astype(self.dtype)
        impl = self.kernels.grouped_matmul
        dot = functools.partial(_ragged_dot, impl=impl, interpret=self.kernels.interpret)
        experts = None if mesh.empty else spec_for(w[0].shape, ("exp", None, None), mesh)
        expert_axis = None if experts is None else experts[0]
        if sharding.axes_size(mesh, expert_axis) == 1:
            expert_axis = None  # experts not split
        if mesh.empty or (impl == "xla" and expert_axis is None):
            return _grouped_experts(x, mask, top_i, gates, w, num_experts=self.num_experts, dot=dot)
        tokens = spec_for(x.shape, ("batch", None), mesh)
        per_token = spec_for(top_i.shape, ("batch", None), mesh)
        if expert_axis is not None:
            body = functools.partial(_expert_parallel, num_experts=self.num_experts,
                                     n_ep=sharding.axes_size(mesh, expert_axis), axis=expert_axis,
                                     dot=dot)
        else:  # a Pallas kernel sees local arrays: each device its rows, with every expert
            body = functools.partial(_grouped_experts, num_experts=self.num_experts, dot=dot)
            experts = PartitionSpec()
        return jax.shard_map(body, mesh=mesh, in_specs=(tokens, PartitionSpec(per_token[0]), per_token,
                                                        per_token, (experts,) * 3),
                             out_specs=tokens, check_vma=False)(x, mask, top_i, gates, w)


def _sort_by_expert(mask, top_i, num_experts):
    """(order, sizes): assignments (token, choice) flattened token-major, sorted by expert
    (padding, given the id E, sorts last), and each expert's count."""
    expert_of = jnp.where(mask[:, None], top_i, num_experts).reshape(-1)
    return jnp.argsort(expert_of, stable=True), _counts(expert_of, num_experts)[:num_experts]


def _counts(expert_of, num_experts):
    """[E + 1] int32: how many entries of `expert_of` name each expert (E: padding)."""
    return jnp.zeros((num_experts + 1,), jnp.int32).at[expert_of].add(1)


def _rank_within_expert(expert_of, num_experts):
    """Position of each entry of `expert_of` [n] among the entries with the same expert, in
    order (a stable sort; no [n, E] one-hot and no cumsum over n)."""
    rank = _inverse(jnp.argsort(expert_of, stable=True))
    counts = _counts(expert_of, num_experts)
    return rank - (jnp.cumsum(counts) - counts)[expert_of]


def _inverse(order):
    return jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))


def _ragged_dot(x, w, sizes, *, impl: str, interpret: bool):
    """Grouped matmul of rows sorted by group: x [n, k], w [e, k, h], sizes [e] int32 -> [n, h],
    row r of group i times w[i]; rows past sum(sizes) are 0 (module docstring: impl)."""
    if impl == "xla":
        return jax.lax.ragged_dot(x, w, sizes)
    n = x.shape[0]
    # The kernel leaves rows past the groups unwritten, forward and backward (its dx): select
    # them away on both sides, so no stale value reaches a gradient.
    valid = (jnp.arange(n) < sizes.sum())[:, None]
    tm = min(MEGABLOX_TILES[0], -(-n // 128) * 128)
    tiling = (tm, min(MEGABLOX_TILES[1], x.shape[1]), min(MEGABLOX_TILES[2], w.shape[2]))
    xp = jnp.pad(jnp.where(valid, x, 0), ((0, -n % tm), (0, 0)))
    # Positional: the custom_vjp's non-differentiable arguments (dtype, tiling, transpose_rhs,
    # interpret) cannot be keywords.
    y = megablox_gmm(xp, w, sizes, x.dtype, tiling, None, None, False, interpret)
    return jnp.where(valid, y[:n], 0)


def _swiglu_ragged(xs, w, sizes, dot):
    """SwiGLU of rows sorted by expert, `dot` (`_ragged_dot` with its kernel) over the group
    sizes."""
    w0, w1, wo = w
    h = jax.nn.silu(dot(xs, w0, sizes)) * dot(xs, w1, sizes)
    return dot(h, wo, sizes)


def _combine(ys, order, mask, gates, k):
    """Rows sorted by expert -> [t, m]: unsort, then the gate-weighted sum over choices."""
    t = mask.shape[0]
    # Rows past the group sizes are unspecified on some backends: select, don't multiply.
    yk = jnp.where(mask[:, None, None], ys[_inverse(order)].reshape(t, k, -1), 0)
    return jnp.einsum("tkm,tk->tm", yk, gates.astype(ys.dtype))


def _grouped_experts(x, mask, top_i, gates, w, *, num_experts, dot):
    """All experts on this device: sort assignments by expert, three grouped matmuls, unsort."""
    k = top_i.shape[1]
    order, sizes = _sort_by_expert(mask, top_i, num_experts)
    return _combine(_swiglu_ragged(x[order // k], w, sizes, dot), order, mask, gates, k)


def _expert_parallel(x, mask, top_i, gates, w, *, num_experts, n_ep, axis, dot):
    """One device's part of the dropless layer under `shard_map` (experts split over the mesh
    axis `axis` into n_ep shards of E / n_ep; tokens split over the batch axes).

    Each device sorts its own assignments by expert and sends shard j the rows for j's experts
    with one all-to-all over `axis`; a shard receives at most every peer's every assignment,
    so the fixed-size buffers ([n_ep, n, m] for n local assignments) never drop. The receiver
    regroups the rows by its local expert, runs them with `dot`, and a second all-to-all
    returns them in the order they came. (`jax.lax.ragged_all_to_all` would send only the filled
    rows; XLA:CPU does not implement it, and this path must run in CI.)
    """
    t, k = top_i.shape
    n, local = t * k, num_experts // n_ep
    order, sizes = _sort_by_expert(mask, top_i, num_experts)
    xs = x[order // k]  # [n, m], sorted by expert
    per_shard = sizes.reshape(n_ep, local)  # [destination, its local expert]
    send_n = per_shard.sum(-1)
    send_start = jnp.cumsum(send_n) - send_n
    row = jnp.arange(n)
    # Destination j's rows are xs[send_start[j]:][:send_n[j]], packed at the front of block j.
    valid = row[None, :] < send_n[:, None]  # [n_ep, n]
    src = jnp.minimum(send_start[:, None] + row[None, :], n - 1)
    send = jnp.where(valid[..., None], xs[src], 0)  # [n_ep, n, m]
    recv = jax.lax.all_to_all(send, axis, 0, 0, tiled=True)  # block i: from source i
    recv_sizes = jax.lax.all_to_all(per_shard, axis, 0, 0, tiled=True)  # [source, expert]
    # Local expert of every received row (source i's rows come sorted by expert); `local`
    # marks the empty tail of each block, which sorts last and no group covers.
    ends = jnp.cumsum(recv_sizes, axis=-1)  # [n_ep, local]
    expert_of = jax.vmap(lambda e: jnp.searchsorted(e, row, side="right"))(ends)  # [n_ep, n]
    regroup = jnp.argsort(expert_of.reshape(-1), stable=True)
    ys = _swiglu_ragged(recv.reshape(n_ep * n, -1)[regroup], w, recv_sizes.sum(0), dot)
    back = jax.lax.all_to_all(ys[_inverse(regroup)].reshape(n_ep, n, -1), axis, 0, 0,
                              tiled=True)  # block j: what shard j computed for our rows
    dest = jnp.searchsorted(jnp.cumsum(send_n), row, side="right")  # shard of sorted row r
    dest = jnp.minimum(dest, n_ep - 1)  # padding rows sort last; their outputs are dropped
    ys_sorted = back[dest, row - send_start[dest]]
    return _combine(ys_sorted, order, mask, gates, k)
