"""`python -m mm1_jax.inspect --config=experiments/x.py [--json]`: sizes, eta(N) and FLOPs.

Nothing is allocated: the model is built under `nnx.eval_shape` and image FLOPs come from XLA's
cost analysis of the lowered (not compiled) encoder + connector on abstract inputs.

Definitions
- `non_embedding`: every parameter except the token embedding and the LM head.
- `lr_params` (N of MM1 eq. 1): the decoder's non-embedding parameters with every MoE layer
  counted as its dense backbone (one expert's FFN), because MM1 trains its MoEs "with the same
  hyperparameters discovered for the dense backbone" (section 5).
- `active`: parameters a token touches: vision + connector + decoder with top_k of E experts.
- `flops_per_token`: training FLOPs (forward + backward = 3x forward) per decoder token,
  6 * (active decoder matmul parameters, LM head included) + 12 * depth * seq_len * heads * head_dim
  for attention (the PaLM appendix B convention, no causal discount).
- `flops_per_image`: training FLOPs of encoder + connector per image (3x XLA's forward count).
"""

from __future__ import annotations

import json
import math
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from mm1_jax.config import moe_layer_ids, peak_lr, vision_grid
from mm1_jax.models.vision import VisionBlock, num_blocks_used


def _abstract_model(cfg):
    from mm1_jax.models.mm1 import MM1Model

    return nnx.eval_shape(lambda: MM1Model(cfg, rngs=nnx.Rngs(0)))


def _count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _expert_params(state) -> int:
    """Parameters of all experts (leaves under an `ffn` whose leading non-layer axis is experts)."""
    total = 0
    for path, v in nnx.to_flat_state(state):
        names = v.get_metadata().get("out_sharding") or ()
        if "exp" in names:
            total += math.prod(v.shape)
    return total


def image_flops(cfg: ml_collections.ConfigDict) -> float:
    """Training FLOPs (3x forward) of the encoder + connector for one image."""
    model = _abstract_model(cfg)
    graphdef, state = nnx.split((model.vision, model.connector))
    size = cfg.model.vision.image_size

    def forward(state, images):
        vision, connector = nnx.merge(graphdef, state)
        return connector(vision(images))

    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    # XLA counts the body of the scanned block stack once, not once per block: add the others.
    block = nnx.eval_shape(lambda: VisionBlock(cfg, rngs=nnx.Rngs(0)))
    block_def, block_state = nnx.split(block)
    patches = jax.ShapeDtypeStruct((1, vision_grid(cfg) ** 2 + 1, cfg.model.vision.width),
                                   jnp.dtype(cfg.model.dtype))
    one_block = _flops(lambda st, x: nnx.merge(block_def, st)(x), block_state, patches)
    return 3.0 * (_flops(forward, state, images) + (num_blocks_used(cfg) - 1) * one_block)


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def model_stats(cfg: ml_collections.ConfigDict, *, with_flops: bool = True) -> dict:
    """Parameter counts, MM1's peak learning rate and training FLOPs for `cfg` (see module doc)."""
    model = _abstract_model(cfg)
    params = lambda m: nnx.state(m, nnx.Param)  # noqa: E731
    vision, connector = _count(params(model.vision)), _count(params(model.connector))
    dec_state = params(model.decoder)
    decoder = _count(dec_state)
    d, m = cfg.model.decoder, cfg.model.moe
    embedding = d.vocab_size * d.width * (1 if d.tie_embeddings else 2)
    experts = _expert_params(dec_state)
    n_moe = len(moe_layer_ids(cfg))
    one_expert = experts // (m.num_experts * n_moe) if n_moe else 0
    router = n_moe * d.width * m.num_experts
    dec_active = decoder - experts + n_moe * m.top_k * one_expert if n_moe else decoder
    total = vision + connector + decoder
    lr_params = decoder - embedding - experts - router + n_moe * one_expert
    # Matmul parameters a token runs through: the active decoder minus the embedding gather,
    # plus the LM head (a tied head still costs its matmul).
    matmul = dec_active - embedding + d.vocab_size * d.width
    attn = 12 * d.depth * cfg.train.seq_len * d.heads * d.head_dim
    stats = {
        "total": total,
        "vision": vision,
        "connector": connector,
        "decoder": decoder,
        "embedding": embedding,
        "non_embedding": total - embedding,
        "active": vision + connector + dec_active,
        "decoder_active": dec_active,
        "lr_params": lr_params,
        "peak_lr": peak_lr(lr_params),
        "image_tokens_per_image": cfg.model.connector.num_tokens,
        "flops_per_token": float(6 * matmul + attn),
    }
    if with_flops:
        stats["flops_per_image"] = image_flops(cfg)
    return stats


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return f"{n:.0f}"


def format_table(cfg, stats: dict) -> str:
    rows = [("vision encoder", stats["vision"]), ("connector", stats["connector"]),
            ("decoder", stats["decoder"]), ("  of which embedding + head", stats["embedding"]),
            ("total", stats["total"]), ("non-embedding", stats["non_embedding"]),
            ("active per token", stats["active"]), ("N for eta (dense backbone)", stats["lr_params"])]
    lines = [f"config: {cfg.name}"]
    lines += [f"  {name:<28} {_human(v):>10}  ({v:,})" for name, v in rows]
    lines.append(f"  {'peak lr eta(N)':<28} {stats['peak_lr']:.3e}   weight decay {0.1 * stats['peak_lr']:.3e}")
    lines.append(f"  {'image tokens per image':<28} {stats['image_tokens_per_image']}")
    lines.append(f"  {'train FLOPs / token':<28} {_human(stats['flops_per_token'])}")
    if "flops_per_image" in stats:
        lines.append(f"  {'train FLOPs / image':<28} {_human(stats['flops_per_image'])}")
    return "\n".join(lines)


def main(argv):
    del argv
    from mm1_jax.config import validate

    cfg = validate(flags.FLAGS.config)
    stats = model_stats(cfg)
    if flags.FLAGS.json:
        print(json.dumps({k: (float(v) if isinstance(v, (float, np.floating)) else v)
                          for k, v in stats.items()}))
    else:
        print(format_table(cfg, stats))


if __name__ == "__main__":
    # Flags are defined here, not at import, so programs with their own --config can import
    # model_stats.
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
    flags.mark_flag_as_required("config")
    app.run(main)
