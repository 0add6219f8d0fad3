"""Forward+backward throughput of the MM1 model on synthetic full batches, and model FLOP/s as
a fraction of a large matmul's FLOP/s measured in the same run (the CPU's practical peak).

    python benchmarks/model_fwd_bwd.py [--configs demo_cpu,cpu_100m] [--batch 8,1]

Model FLOPs per step come from mm1_jax.models.stats (6N + attention per token, XLA's count for the
encoder + connector per image), counted for fwd+bwd. Batches come from
mm1_jax.data.synthetic; the model encodes every image slot (fixed shapes), so every slot counts.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import header, time_fn  # noqa: E402
from mm1_jax.config import load_config  # noqa: E402
from mm1_jax.models.mm1 import MM1Model  # noqa: E402
from mm1_jax.startup import abstract_model  # noqa: E402
from mm1_jax.perf import measure_matmul_flops  # noqa: E402
from mm1_jax.data.synthetic import SPECIAL, make_global_batch  # noqa: E402


def fwd_bwd(cfg):
    model = MM1Model(cfg.model, image_token_id=SPECIAL.image, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def step(params, batch):
        def loss_fn(p):
            logits, aux = nnx.merge(graphdef, p)(batch)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch.targets)
            return (ce * batch.loss_mask).sum() / batch.loss_mask.sum() + aux["moe/aux_loss"]
        return jax.value_and_grad(loss_fn)(params)

    return step, params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="demo_cpu,cpu_100m")
    ap.add_argument("--batch", default="8,1", help="rows per step, one per config")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(header("MM1 forward+backward throughput"))
    peak = measure_matmul_flops(2048)
    print(f"matmul 2048^3 f32 peak: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'config':<10} {'params':>9} {'batch':>5} {'seq':>5} {'imgs':>5} {'step s':>8} "
          f"{'tokens/s':>9} {'images/s':>9} {'GFLOP/s':>8} {'vs matmul':>9}")
    for name, b in zip(args.configs.split(","), map(int, args.batch.split(","))):
        cfg = load_config(os.path.join(root, "experiments", f"{name}.py"))
        stats = abstract_model(cfg, SPECIAL).stats.as_dict()
        cfg.train.batch_size = b
        batch = make_global_batch(cfg, seed=0, index=0)
        step, params = fwd_bwd(cfg)
        sec = time_fn(step, params, batch, warmup=1, repeats=args.repeats)
        tokens, images = b * cfg.train.seq_len, b * cfg.data.max_images
        flops = tokens * stats["flops_per_token"] + images * stats["flops_per_image"]
        print(f"{name:<10} {stats['total'] / 1e6:>8.1f}M {b:>5} {cfg.train.seq_len:>5} {images:>5} "
              f"{sec:>8.3f} {tokens / sec:>9.0f} {images / sec:>9.1f} {flops / sec / 1e9:>8.1f} "
              f"{flops / sec / peak:>9.3f}")


if __name__ == "__main__":
    main()
