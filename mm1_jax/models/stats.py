"""Parameter counts, MM1's peak learning rate and training FLOPs of a model, read off its
abstract (shape-only) instance: nothing is allocated.

Definitions
- `non_embedding`: every parameter except the token embedding and the LM head.
- `lr_params` (N of MM1 eq. 1): the decoder's non-embedding parameters with every MoE layer
  counted as its dense backbone (one expert's FFN), because MM1 trains its MoEs "with the same
  hyperparameters discovered for the dense backbone" (section 4).
- `active`: parameters a token touches: vision + connector + decoder with top_k of E experts.
- `flops_per_token`: training FLOPs (forward + backward = 3x forward) per decoder token,
  6 * (active decoder matmul parameters, LM head included) + 12 * depth * seq_len * heads * head_dim
  for attention (the PaLM appendix B convention, no causal discount).
- `flops_per_image`: training FLOPs of encoder + connector per image (3x XLA's forward count of
  the lowered, not compiled, encoder + connector on an abstract image).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mm1_jax.config import moe_layer_ids, peak_lr


@dataclasses.dataclass(frozen=True)
class ModelStats:
    total: int
    vision: int
    connector: int
    decoder: int
    embedding: int
    non_embedding: int
    active: int
    decoder_active: int
    lr_params: int
    peak_lr: float  # eta(N) of MM1 eq. (1); the run's rate is optim.lr when set
    image_tokens_per_image: int
    flops_per_token: float
    flops_per_image: float | None  # None when not computed (with_image_flops=False)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _expert_params(state) -> int:
    """Parameters of all experts: leaves with an `exp` logical axis."""
    return sum(math.prod(v.shape) for _, v in nnx.to_flat_state(state)
               if "exp" in (v.get_metadata().get("out_sharding") or ()))


def image_flops(abstract_model, image_size: int) -> float:
    """Training FLOPs (3x forward) of the encoder + connector for one uint8 image."""
    graphdef, state = nnx.split((abstract_model.vision, abstract_model.connector))

    def forward(state, images):
        vision, connector = nnx.merge(graphdef, state)
        return connector(vision(images))

    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
    return 3.0 * (xla_flops(forward, state, images) + uncounted_block_flops(abstract_model.vision, 1))


def uncounted_block_flops(vision, images: int) -> float:
    """Forward FLOPs that XLA's count of a program running `vision` on `images` images misses:
    it counts the body of the scanned block stack once, not once per block. The other blocks,
    each costed as one block of the stack (its parameters sliced off the stacked layers axis)."""
    blocks_def, blocks_state = nnx.split(vision.blocks)
    n_blocks = jax.tree.leaves(blocks_state)[0].shape[0]
    one_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), blocks_state)
    tokens = jax.ShapeDtypeStruct((images, *vision.pos_embed.shape), vision.dtype)
    one_block = xla_flops(lambda st, x: nnx.merge(blocks_def, st)(x), one_state, tokens)
    return (n_blocks - 1) * one_block


def xla_flops(fn, *args) -> float:
    """XLA's forward FLOP count of `fn` lowered (not compiled) for `args` (shapes suffice)."""
    cost = jax.jit(fn).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def model_stats(abstract_model, m: ml_collections.ConfigDict, seq_len: int, *,
                with_image_flops: bool = True) -> ModelStats:
    """Statistics of `abstract_model` (an MM1Model under nnx.eval_shape) built from `m`
    (`cfg.model`) for training rows of `seq_len` tokens."""
    params = lambda mod: nnx.state(mod, nnx.Param)  # noqa: E731
    vision, connector = _count(params(abstract_model.vision)), _count(params(abstract_model.connector))
    dec_state = params(abstract_model.decoder)
    decoder = _count(dec_state)
    d, moe = m.decoder, m.moe
    embedding = d.vocab_size * d.width * (1 if d.tie_embeddings else 2)
    experts = _expert_params(dec_state)
    n_moe = len(moe_layer_ids(d.depth, moe))
    one_expert = experts // (moe.num_experts * n_moe) if n_moe else 0
    router = n_moe * d.width * moe.num_experts
    dec_active = decoder - experts + n_moe * moe.top_k * one_expert if n_moe else decoder
    lr_params = decoder - embedding - experts - router + n_moe * one_expert
    # Matmul parameters a token runs through: the active decoder minus the embedding gather,
    # plus the LM head (a tied head still costs its matmul).
    matmul = dec_active - embedding + d.vocab_size * d.width
    attn = 12 * d.depth * seq_len * d.heads * d.head_dim
    total = vision + connector + decoder
    return ModelStats(
        total=total, vision=vision, connector=connector, decoder=decoder, embedding=embedding,
        non_embedding=total - embedding, active=vision + connector + dec_active,
        decoder_active=dec_active, lr_params=lr_params, peak_lr=peak_lr(lr_params),
        image_tokens_per_image=m.connector.num_tokens, flops_per_token=float(6 * matmul + attn),
        flops_per_image=image_flops(abstract_model, m.vision.image_size) if with_image_flops else None)
