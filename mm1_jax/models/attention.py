"""The decoder's causal self-attention over packed rows, by one of three kernels.

Every implementation computes the same thing: a query attends to the keys at or before it in its
own segment (`segment_ids`, 0 = padding), scaled by 1/sqrt(head_dim). Outputs at padding tokens
are unused; each implementation keeps them finite but they may differ between implementations.

The kernel is `Kernels.attention` (mm1_jax/models/kernels.py), which start-up resolves from
`config.model.attention` for the devices in use ("auto": splash on TPU, cudnn on GPU in
bf16/fp16, xla otherwise):
- "xla": plain XLA ops (`xla_attention`): the rows are cut into up to 8 query blocks, and block
  i scores only the keys up to its own end, so the causal upper triangle is mostly skipped
  ((nb + 1) / 2nb of the full [t, s] scores: 56% at 8 blocks); each block's scores are float32
  and masked with `attention_mask`. Same arithmetic as `jax.nn.dot_product_attention`'s XLA
  path; benchmarks/attention.py times the two on CPU (BENCHMARKS.md).
- "splash": JAX's Pallas TPU splash attention, a flash-attention kernel that takes the segment
  ids and the causal mask blockwise and never forms a [t, s] array; blocks above the diagonal are
  skipped. GQA runs natively (query head i reads kv head i // (n / g)). Under a mesh the kernel
  runs inside `jax.shard_map`: rows over the batch axes, heads as the kv heads split (the rules
  table's "kv_heads"). Rows are padded to a multiple of 128 with padding tokens; blocks are the
  largest of 512, 256, 128 dividing that. With `Kernels.interpret` (CPU) it runs in Pallas
  interpret mode (slow; for tests).
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's flash attention, on
  NVIDIA GPUs in bf16/fp16. Its public entry point takes no segment ids (the packed
  `q_offsets`/`kv_offsets` form exists only in `jax._src`, Hopper only), so the segment mask is
  passed as cuDNN's additive [b, 1, t, s] bias (with `is_causal`, so blocks above the diagonal
  are skipped): no [b, n, t, s] scores, but the bias and its gradient are [b, 1, t, s] arrays.
  Not run on a GPU in this repository's tests (none was available).

The KV-cache path of generation (`Decoder.forward_with_cache`) always uses xla.

Legend: b batch, t query positions, s key positions, n query heads, g kv heads, k head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from mm1_jax.models.kernels import Kernels
from mm1_jax.sharding import spec_for

SPLASH_BLOCKS = (512, 256, 128)  # block sizes tried, largest first; rows pad to the last


def attention_mask(q_segments: jax.Array, kv_segments: jax.Array, q_start=0) -> jax.Array:
    """[b, 1, t, s] bool: causal, same segment, and never to or from padding (segment 0).

    q_segments [b, t], kv_segments [b, s]; query i sits at key position q_start + i (a KV cache).
    """
    t, s = q_segments.shape[-1], kv_segments.shape[-1]
    q_pos, k_pos = q_start + jnp.arange(t)[:, None], jnp.arange(s)[None, :]
    same = q_segments[:, :, None] == kv_segments[:, None, :]
    real = (q_segments != 0)[:, :, None]
    # A padding row attends to itself only, so its softmax stays finite (its output is unused).
    return (((k_pos <= q_pos) & same & real) | (k_pos == q_pos))[:, None]


def packed_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
                     kernels: Kernels) -> jax.Array:
    """Causal self-attention within segments. q [b, t, n, k], k/v [b, t, g, k], segment_ids
    [b, t] -> [b, t, n, k], by `kernels.attention`."""
    if kernels.attention == "splash":
        return splash_attention(q, k, v, segment_ids, interpret=kernels.interpret)
    if kernels.attention == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=attention_mask(segment_ids, segment_ids),
                                            is_causal=True, implementation="cudnn")
    return xla_attention(q, k, v, segment_ids)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """The "xla" kernel (module docstring); shapes as `packed_attention`."""
    b, t, n, d = q.shape
    g = k.shape[2]
    blocks = min(8, max(1, t // 128))
    while t % blocks:
        blocks -= 1
    size = t // blocks
    q = q.reshape(b, t, g, n // g, d)  # query head i reads kv head i // (n / g)
    scale = jnp.asarray(d ** -0.5, jnp.float32)
    out = []
    for i in range(blocks):
        lo, hi = i * size, (i + 1) * size  # this block's queries see keys [0, hi)
        logits = jnp.einsum("btgrk,bsgk->bgrts", q[:, lo:hi], k[:, :hi],
                            preferred_element_type=jnp.float32) * scale
        mask = attention_mask(segment_ids[:, lo:hi], segment_ids[:, :hi], q_start=lo)
        logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out.append(jnp.einsum("bgrts,bsgk->btgrk", probs, v[:, :hi]))
    return jnp.concatenate(out, axis=1).reshape(b, t, n, d)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *,
                     interpret: bool = False) -> jax.Array:
    """The splash kernel (see the module docstring); shapes as `packed_attention`."""
    t = q.shape[1]
    pad = -t % SPLASH_BLOCKS[-1]
    if pad:  # trailing padding tokens: after every real token, so causally invisible to it
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)))
    # The kernel does not scale the logits; dot_product_attention scales them by 1/sqrt(k).
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # the kernel's [b, heads, t, k]

    def local(q, k, v, segment_ids):
        heads, length = q.shape[1], q.shape[2]
        block = next(b for b in SPLASH_BLOCKS if length % b == 0)
        sizes = splash.BlockSizes(
            block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
        mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
        kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                        interpret=interpret)
        return jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(segment_ids, segment_ids))

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = local(q, k, v, segment_ids)
    else:
        # Query heads split exactly like kv heads, so each shard keeps its heads' kv heads.
        spec = spec_for(k.shape, ("batch", "kv_heads", None, None), mesh)
        out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, PartitionSpec(spec[0])),
                            out_specs=spec, check_vma=False)(q, k, v, segment_ids)
    return jnp.swapaxes(out, 1, 2)[:, :t]
