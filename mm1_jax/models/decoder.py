"""Llama-compatible decoder (RMSNorm, SwiGLU, RoPE, optional GQA), dense or with top-2 MoE FFNs.

Layers are grouped in periods of `moe.every` blocks: `every - 1` dense blocks then one block whose
FFN is sparse (MM1 section 4: 3B-MoE replaces every 2nd FFN, 7B-MoE every 4th). The groups are
stacked on a leading "layers" axis and run with `nnx.scan`; a dense decoder is a period of one.

Packing: attention is causal *within* a segment (`segment_ids`, 0 = padding), and RoPE uses the
per-token `positions`, which restart in every packed document, so two documents packed in one
row see exactly what they would see alone. The attention kernel (XLA, splash, cuDNN) is
`Kernels.attention` (models/kernels.py, resolved at start-up from `config.model.attention`);
generation's KV cache is one segment of valid slots, attended with XLA.

Legend: b batch, t query positions, s key positions, d width, n query heads, g kv heads, k head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mm1_jax.config import expert_mlp_dim, moe_layer_ids, moe_period
from mm1_jax.models import layers
from mm1_jax.models.attention import attention_mask, packed_attention
from mm1_jax.models.head_loss import chunk_count, linear_cross_entropy
from mm1_jax.models.kernels import PORTABLE, Kernels
from mm1_jax.models.moe import MoEFeedForward
from mm1_jax.sharding import constrain


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in Llama's (HF) half-rotation layout. x: [b, t, n, k]; positions: [b, t]."""
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [k/2]
    angle = positions[..., None].astype(jnp.float32) * freq  # [b, t, k/2]
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    """kernels: `Kernels.attention` is the kernel of the packed (cache-less) path."""

    def __init__(self, d: ml_collections.ConfigDict, *, kernels: Kernels, dtype, param_dtype,
                 rngs: nnx.Rngs):
        dt, pdt = dtype, param_dtype
        self.dtype, self.theta, self.kernels = dt, d.rope_theta, kernels
        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        self.wq = layers.param(rngs, init, (d.width, d.heads, d.head_dim), ("embed", "heads", "head_dim"), pdt)
        self.wk = layers.param(rngs, init, (d.width, d.kv_heads, d.head_dim), ("embed", "kv_heads", "head_dim"), pdt)
        self.wv = layers.param(rngs, init, (d.width, d.kv_heads, d.head_dim), ("embed", "kv_heads", "head_dim"), pdt)
        out_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        self.wo = layers.param(rngs, out_init, (d.heads, d.head_dim, d.width), ("heads", "head_dim", "embed"), pdt)
        # Qwen2-style q/k/v biases (`decoder.attn_bias`); Llama and Mistral have none.
        self.attn_bias = d.attn_bias
        if d.attn_bias:
            zeros = nnx.initializers.zeros
            self.bq = layers.param(rngs, zeros, (d.heads, d.head_dim), ("heads", "head_dim"), pdt)
            self.bk = layers.param(rngs, zeros, (d.kv_heads, d.head_dim), ("kv_heads", "head_dim"), pdt)
            self.bv = layers.param(rngs, zeros, (d.kv_heads, d.head_dim), ("kv_heads", "head_dim"), pdt)

    def __call__(self, x, positions, segment_ids, kv=None, index=None):
        """x [b, t, d]; segment_ids [b, t], or with a cache (k, v) [b, T, g, k] those of its T
        slots; this call's keys land at slots index.. ."""
        x = x.astype(self.dtype)
        w = lambda p: p[...].astype(self.dtype)  # noqa: E731
        q = jnp.einsum("btd,dnk->btnk", x, w(self.wq))
        k = jnp.einsum("bsd,dgk->bsgk", x, w(self.wk))
        v = jnp.einsum("bsd,dgk->bsgk", x, w(self.wv))
        if self.attn_bias:
            q, k, v = q + w(self.bq), k + w(self.bk), v + w(self.bv)
        q, k = rope(q, positions, self.theta), rope(k, positions, self.theta)
        if kv is None:
            out = packed_attention(q, k, v, segment_ids, self.kernels)
        else:
            at = (0, index, 0, 0)
            k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), at)
            v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), at)
            kv = (k, v)
            q_segments = jax.lax.dynamic_slice_in_dim(segment_ids, index, q.shape[1], axis=1)
            mask = attention_mask(q_segments, segment_ids, index)
            out = jax.nn.dot_product_attention(q, k.astype(self.dtype), v.astype(self.dtype),
                                               mask=mask)
        out = checkpoint_name(out, "attn_out")
        return jnp.einsum("btnk,nkd->btd", out, w(self.wo)), kv


class SwiGLU(nnx.Module):
    def __init__(self, d: ml_collections.ConfigDict, *, dtype, param_dtype, rngs: nnx.Rngs):
        lin = dict(bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate = layers.Linear(d.width, d.mlp_dim, ("embed", "mlp"), **lin)
        self.up = layers.Linear(d.width, d.mlp_dim, ("embed", "mlp"), **lin)
        self.down = layers.Linear(d.mlp_dim, d.width, ("mlp", "embed"), **lin)

    def __call__(self, x):
        dt = self.gate.dtype
        w = (lin.kernel[...].astype(dt) for lin in (self.gate, self.up, self.down))
        return layers.swiglu(x.astype(dt), *w)


class Block(nnx.Module):
    """Pre-norm decoder block; the FFN is a SwiGLU or, with `sparse`, a top-2 MoE."""

    def __init__(self, d: ml_collections.ConfigDict, moe: ml_collections.ConfigDict, *,
                 sparse: bool, kernels: Kernels, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn_norm = layers.RMSNorm(d.width, eps=d.norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.attn = Attention(d, kernels=kernels, **kw)
        self.ffn_norm = layers.RMSNorm(d.width, eps=d.norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.sparse = sparse
        if sparse:
            self.ffn = MoEFeedForward(moe, width=d.width, mlp_dim=expert_mlp_dim(d, moe),
                                      kernels=kernels, **kw)
        else:
            self.ffn = SwiGLU(d, **kw)

    def __call__(self, x, positions, segment_ids, token_mask, train: bool, kv=None, index=None):
        y, kv = self.attn(self.attn_norm(x), positions, segment_ids, kv, index)
        x = x + y
        h = self.ffn_norm(x)
        if self.sparse:
            y, stats = self.ffn(h, token_mask, train=train)
        else:
            y, stats = self.ffn(h), {}
        x = constrain((x + y).astype(x.dtype), ("batch", "seq", None))
        return x, stats, kv


class Period(nnx.Module):
    """`moe_period` consecutive blocks, sparse where `moe_layer_ids` says (the same in every
    period, so the periods stack and scan)."""

    def __init__(self, d: ml_collections.ConfigDict, moe: ml_collections.ConfigDict, *,
                 kernels: Kernels, dtype, param_dtype, rngs: nnx.Rngs):
        sparse = set(moe_layer_ids(d.depth, moe))
        self.blocks = nnx.List(
            [Block(d, moe, sparse=i in sparse, kernels=kernels, dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs)
             for i in range(moe_period(moe))])

    def __call__(self, x, positions, segment_ids, token_mask, train: bool, kv=None, index=None):
        """kv: None or a cache (k, v), each [blocks, b, T, g, k]."""
        stats, new_kv = {}, []
        for i, blk in enumerate(self.blocks):
            x, s, blk_kv = blk(x, positions, segment_ids, token_mask, train,
                               None if kv is None else (kv[0][i], kv[1][i]), index)
            stats = s or stats
            new_kv.append(blk_kv)
        if kv is not None:
            kv = (jnp.stack([c[0] for c in new_kv]), jnp.stack([c[1] for c in new_kv]))
        return x, stats, kv


class Decoder(nnx.Module):
    """Input embeddings [b, t, d] -> float32 logits; the MM1 model substitutes image features
    for placeholders between `embed_tokens` and the blocks.

    d: `cfg.model.decoder`; moe: `cfg.model.moe` (num_experts 0 = dense); remat: the policy
    name applied to every scanned period; kernels: the attention and grouped-matmul kernels
    (models/kernels.py); loss_chunks:
    `cfg.model.loss_chunks`, how `head_loss` computes the training loss.

    The output projection runs in float32 (its inputs and weights cast up): the logits feed a
    float32 cross-entropy over the whole vocabulary, and producing them in bf16 first would round
    every logit to 8 bits of mantissa before the softmax.
    """

    def __init__(self, d: ml_collections.ConfigDict, moe: ml_collections.ConfigDict, *, dtype,
                 param_dtype, remat: str, rngs: nnx.Rngs, kernels: Kernels = PORTABLE,
                 loss_chunks: int = 0):
        dt, pdt = dtype, param_dtype
        self.dtype, self.remat_policy, self.loss_chunks = dt, remat, loss_chunks
        self.tie = d.tie_embeddings
        self.real_vocab = d.real_vocab_size if d.real_vocab_size is not None else d.vocab_size
        self.embed = layers.param(rngs, nnx.initializers.normal(0.02), (d.vocab_size, d.width),
                                  ("vocab", "embed"), pdt)

        @nnx.split_rngs(splits=d.depth // moe_period(moe))
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_periods(r):
            return Period(d, moe, kernels=kernels, dtype=dt, param_dtype=pdt, rngs=r)

        self.periods = make_periods(rngs)
        self.final_norm = layers.RMSNorm(d.width, eps=d.norm_eps, param_dtype=pdt, rngs=rngs)
        if not self.tie:
            self.lm_head = layers.Linear(d.width, d.vocab_size, ("embed", "vocab"), bias=False,
                                         dtype=jnp.float32, param_dtype=pdt, rngs=rngs)

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
        return constrain(x, ("batch", "seq", None))  # not the table's "embed"-over-fsdp layout

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 train: bool = True):
        """x: [b, t, d] input embeddings -> (logits [b, t, V], per-period MoE stats)."""
        h, stats = self.features(x, positions, segment_ids, train)
        return self.head(h), stats

    def features(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 train: bool = True):
        """x: [b, t, d] input embeddings -> (the final normed hidden states [b, t, d] that
        `head` projects, per-period MoE stats)."""
        x, stats, _ = self._blocks(x, positions, segment_ids, segment_ids != 0, train, None, None)
        return self.final_norm(x), stats

    def init_cache(self, batch: int, length: int, dtype=None):
        """An empty KV cache (k, v), each [periods, blocks, batch, length, kv_heads, head_dim]."""
        wk = self.periods.blocks[0].attn.wk
        periods, _, g, k = wk.shape
        blocks = len(self.periods.blocks)
        shape = (periods, blocks, batch, length, g, k)
        # Split like the activations: rows over the data axes, kv heads over `tensor`.
        names = ("layers", None, "batch", "seq", "kv_heads", "head_dim")
        return tuple(constrain(jnp.zeros(shape, dtype or self.dtype), names) for _ in range(2))

    def forward_with_cache(self, x, positions, key_valid, cache, index, train: bool = False):
        """Runs x [b, t, d] at cache slots index..index+t-1 (prefill: t > 1; decode: t = 1).

        key_valid: [b, T] marks cache slots holding real tokens (this call's included): rows of
        a batch are left-padded to one length, so padding slots never receive attention. The
        valid slots are one segment (1) and the rest padding (0), masked as a packed row is.
        Returns (logits [b, t, V], updated cache).
        """
        token_mask = jax.lax.dynamic_slice_in_dim(key_valid, index, x.shape[1], axis=1)
        logits, _, cache = self._forward(x, positions, key_valid.astype(jnp.int32), token_mask,
                                         train, cache, index)
        return logits, cache

    def _forward(self, x, positions, segment_ids, token_mask, train, kv, index):
        x, stats, kv = self._blocks(x, positions, segment_ids, token_mask, train, kv, index)
        return self.head(self.final_norm(x)), stats, kv

    def _blocks(self, x, positions, segment_ids, token_mask, train, kv, index):
        """The scanned periods: (hidden states before the final norm, MoE stats, cache)."""
        def period(p, h, kv):
            return p(h, positions, segment_ids, token_mask, train, kv, index)

        period = layers.remat(period, self.remat_policy)

        @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0, 0),
                  transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run(p, h, kv):
            h, stats, kv = period(p, h, kv)
            return h, stats, kv

        return run(self.periods, constrain(x, ("batch", "seq", None)), kv)

    def hidden_states(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                      train: bool = False) -> jax.Array:
        """The final normed hidden states [b, t, d] that `head` projects (HF's last
        `hidden_states`), for comparisons with reference implementations."""
        return self.features(x, positions, segment_ids, train)[0]

    def head(self, x: jax.Array) -> jax.Array:
        """Hidden states [b, t, d] -> float32 logits [b, t, V] (padding rows masked)."""
        x = x.astype(jnp.float32)
        if self.tie:
            logits = jnp.einsum("btd,vd->btv", x, self.embed[...].astype(jnp.float32))
        else:
            logits = self.lm_head(x)
        if self.real_vocab < logits.shape[-1]:  # rows padded for sharding are never predicted
            real = jnp.arange(logits.shape[-1]) < self.real_vocab
            logits = jnp.where(real, logits, jnp.finfo(logits.dtype).min)
        return constrain(logits, ("batch", "seq", "vocab"))

    def head_loss(self, h: jax.Array, targets: jax.Array, weights: jax.Array):
        """(sum of weights x cross-entropy, cross-entropy [b, t]) of `head(h)` against targets
        [b, t]; weights [b, t] are data (not differentiated), and only the sum carries a
        gradient. By `loss_chunks` (class docstring): fused and chunked, or from full logits."""
        if self.loss_chunks:
            w = self.embed[...] if self.tie else self.lm_head.kernel[...]
            return linear_cross_entropy(h, w, targets, weights,
                                        chunks=chunk_count(self.loss_chunks, h.shape[1]),
                                        real_vocab=self.real_vocab, vocab_major=self.tie)
        ce = optax.softmax_cross_entropy_with_integer_labels(self.head(h), targets)
        return (ce * weights).sum(), jax.lax.stop_gradient(ce)
