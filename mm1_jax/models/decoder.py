"""Llama-compatible decoder (RMSNorm, SwiGLU, RoPE, optional GQA), dense or with top-2 MoE FFNs.

Layers are grouped in periods of `moe.every` blocks: `every - 1` dense blocks then one block whose
FFN is sparse (MM1 section 5: 3B-MoE replaces every 2nd FFN, 7B-MoE every 4th). The groups are
stacked on a leading "layers" axis and run with `nnx.scan`; a dense decoder is a period of one.

Packing: attention is causal *within* a segment (`segment_ids`, 0 = padding), and RoPE uses the
per-token `positions`, which restart in every packed document, so two documents packed in one
row see exactly what they would see alone.

Legend: b batch, t query positions, s key positions, d width, n query heads, g kv heads, k head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mm1_jax.config import moe_layer_ids
from mm1_jax.models import layers
from mm1_jax.sharding import constrain


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in Llama's (HF) half-rotation layout. x: [b, t, n, k]; positions: [b, t]."""
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [k/2]
    angle = positions[..., None].astype(jnp.float32) * freq  # [b, t, k/2]
    cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """[b, 1, t, s] bool: causal, same segment, and never to or from padding (segment 0)."""
    t = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids != 0)[:, :, None]
    # A padding row attends to itself only, so its softmax stays finite (its output is unused).
    diag = jnp.eye(t, dtype=bool)
    return ((causal & same & real) | diag)[:, None]


class Attention(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d = cfg.model.decoder
        dt, pdt = layers.dtypes(cfg)
        self.dtype, self.theta = dt, d.rope_theta
        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        self.wq = layers.param(rngs, init, (d.width, d.heads, d.head_dim), ("embed", "heads", "head_dim"), pdt)
        self.wk = layers.param(rngs, init, (d.width, d.kv_heads, d.head_dim), ("embed", "kv_heads", "head_dim"), pdt)
        self.wv = layers.param(rngs, init, (d.width, d.kv_heads, d.head_dim), ("embed", "kv_heads", "head_dim"), pdt)
        out_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        self.wo = layers.param(rngs, out_init, (d.heads, d.head_dim, d.width), ("heads", "head_dim", "embed"), pdt)

    def __call__(self, x, positions, mask, kv=None, index=None):
        """kv: optional cache (k, v) [b, T, g, k]; this call's keys land at slots index.. ."""
        x = x.astype(self.dtype)
        w = lambda p: p[...].astype(self.dtype)  # noqa: E731
        q = rope(jnp.einsum("btd,dnk->btnk", x, w(self.wq)), positions, self.theta)
        k = rope(jnp.einsum("bsd,dgk->bsgk", x, w(self.wk)), positions, self.theta)
        v = jnp.einsum("bsd,dgk->bsgk", x, w(self.wv))
        if kv is not None:
            at = (0, index, 0, 0)
            k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), at)
            v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), at)
            kv = (k, v)
        out = jax.nn.dot_product_attention(q, k.astype(self.dtype), v.astype(self.dtype), mask=mask)
        out = checkpoint_name(out, "attn_out")
        return jnp.einsum("btnk,nkd->btd", out, w(self.wo)), kv


class SwiGLU(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d = cfg.model.decoder
        dt, pdt = layers.dtypes(cfg)
        lin = dict(bias=False, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.gate = layers.Linear(d.width, d.mlp_dim, ("embed", "mlp"), **lin)
        self.up = layers.Linear(d.width, d.mlp_dim, ("embed", "mlp"), **lin)
        self.down = layers.Linear(d.mlp_dim, d.width, ("mlp", "embed"), **lin)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
    """Pre-norm decoder block; the FFN is a SwiGLU or, with `sparse`, a top-2 MoE."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, sparse: bool, rngs: nnx.Rngs):
        d = cfg.model.decoder
        _, pdt = layers.dtypes(cfg)
        self.attn_norm = layers.RMSNorm(d.width, eps=d.norm_eps, param_dtype=pdt, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.ffn_norm = layers.RMSNorm(d.width, eps=d.norm_eps, param_dtype=pdt, rngs=rngs)
        self.sparse = sparse
        if sparse:
            from mm1_jax.models.moe import MoEFeedForward

            self.ffn = MoEFeedForward(cfg, rngs=rngs)
        else:
            self.ffn = SwiGLU(cfg, rngs=rngs)

    def __call__(self, x, positions, mask, token_mask, train: bool, kv=None, index=None):
        y, kv = self.attn(self.attn_norm(x), positions, mask, kv, index)
        x = x + y
        h = self.ffn_norm(x)
        if self.sparse:
            y, stats = self.ffn(h, token_mask, train=train)
        else:
            y, stats = self.ffn(h), {}
        x = constrain((x + y).astype(x.dtype), ("batch", "seq", None))
        return x, stats, kv


class Period(nnx.Module):
    """`every` consecutive blocks; in an MoE decoder the last one is sparse."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        sparse = bool(cfg.model.moe.num_experts)
        n = cfg.model.moe.every if sparse else 1
        self.blocks = nnx.List(
            [Block(cfg, sparse=sparse and i == n - 1, rngs=rngs) for i in range(n)])

    def __call__(self, x, positions, mask, token_mask, train: bool, kv=None, index=None):
        """kv: None or a cache (k, v), each [blocks, b, T, g, k]."""
        stats, new_kv = {}, []
        for i, blk in enumerate(self.blocks):
            x, s, blk_kv = blk(x, positions, mask, token_mask, train,
                               None if kv is None else (kv[0][i], kv[1][i]), index)
            stats = s or stats
            new_kv.append(blk_kv)
        if kv is not None:
            kv = (jnp.stack([c[0] for c in new_kv]), jnp.stack([c[1] for c in new_kv]))
        return x, stats, kv


class Decoder(nnx.Module):
    """tokens -> logits; `embeds` lets the MM1 model substitute image features for placeholders."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d = cfg.model.decoder
        dt, pdt = layers.dtypes(cfg)
        self.dtype, self.remat_policy = dt, cfg.model.remat
        self.tie = d.tie_embeddings
        self.embed = layers.param(rngs, nnx.initializers.normal(0.02), (d.vocab_size, d.width),
                                  ("vocab", "embed"), pdt)
        n_periods = d.depth // (cfg.model.moe.every if cfg.model.moe.num_experts else 1)

        @nnx.split_rngs(splits=n_periods)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_periods(r):
            return Period(cfg, rngs=r)

        self.periods = make_periods(rngs)
        self.final_norm = layers.RMSNorm(d.width, eps=d.norm_eps, param_dtype=pdt, rngs=rngs)
        if not self.tie:
            self.lm_head = layers.Linear(d.width, d.vocab_size, ("embed", "vocab"), bias=False,
                                         dtype=dt, param_dtype=pdt, rngs=rngs)
        self.n_sparse = len(moe_layer_ids(cfg))

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
        return constrain(x, ("batch", "seq", None))  # not the table's "embed"-over-fsdp layout

    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 train: bool = True):
        """x: [b, t, d] input embeddings -> (logits [b, t, V], per-period MoE stats)."""
        logits, stats, _ = self._forward(x, positions, attention_mask(segment_ids), segment_ids != 0,
                                         train, None, None)
        return logits, stats

    def init_cache(self, batch: int, length: int, dtype=None):
        """An empty KV cache (k, v), each [periods, blocks, batch, length, kv_heads, head_dim]."""
        wk = self.periods.blocks[0].attn.wk
        periods, _, g, k = wk.shape
        blocks = len(self.periods.blocks)
        shape = (periods, blocks, batch, length, g, k)
        return (jnp.zeros(shape, dtype or self.dtype), jnp.zeros(shape, dtype or self.dtype))

    def forward_with_cache(self, x, positions, key_valid, cache, index, train: bool = False):
        """Runs x [b, t, d] at cache slots index..index+t-1 (prefill: t > 1; decode: t = 1).

        key_valid: [b, T] marks cache slots holding real tokens (this call's included): rows of
        a batch are left-padded to one length, so padding slots never receive attention.
        Returns (logits [b, t, V], updated cache).
        """
        t, length = x.shape[1], key_valid.shape[1]
        q_slot = index + jnp.arange(t)
        k_slot = jnp.arange(length)
        causal = k_slot[None, :] <= q_slot[:, None]
        mask = (causal[None] & key_valid[:, None, :]) | (k_slot[None, :] == q_slot[:, None])[None]
        token_mask = jax.lax.dynamic_slice_in_dim(key_valid, index, t, axis=1)
        logits, _, cache = self._forward(x, positions, mask[:, None], token_mask, train, cache, index)
        return logits, cache

    def _forward(self, x, positions, mask, token_mask, train, kv, index):
        def period(p, h, kv):
            return p(h, positions, mask, token_mask, train, kv, index)

        period = layers.remat(period, self.remat_policy)

        @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0, 0),
                  transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run(p, h, kv):
            h, stats, kv = period(p, h, kv)
            return h, stats, kv

        x, stats, kv = run(self.periods, constrain(x, ("batch", "seq", None)), kv)
        x = self.final_norm(x)
        if self.tie:
            logits = jnp.einsum("btd,vd->btv", x, self.embed[...].astype(self.dtype))
        else:
            logits = self.lm_head(x)
        return constrain(logits, ("batch", "seq", "vocab")), stats, kv
