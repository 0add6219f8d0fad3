"""The "xla" attention kernel (query blocks, causal upper triangle skipped) against
`jax.nn.dot_product_attention` with the dense packed mask, forward + backward, same run.

    python benchmarks/attention.py [--shapes 8x512,2x2048] [--repeats 5]

Shapes are batch x seq with 8 heads of 64 (the peer benchmark's decoder), float32, two packed
documents per row. Prints the median times and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import header, time_fn  # noqa: E402
from mm1_jax.models.attention import attention_mask, xla_attention  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="8x512,2x2048")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(header("attention kernels, forward + backward (benchmarks/attention.py)"))
    print("| batch x seq | dot_product_attention + dense mask (s) | xla blocks (s) | speed-up |")
    print("|---|---|---|---|")
    for shape in args.shapes.split(","):
        b, t = (int(x) for x in shape.split("x"))
        ks = jax.random.split(jax.random.key(t), 3)
        q, k, v = (jax.random.normal(key, (b, t, 8, 64), jnp.float32) for key in ks)
        seg = np.ones((b, t), np.int32)
        seg[:, t // 3:] = 2
        seg = jnp.asarray(seg)

        def dense(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, mask=attention_mask(seg, seg))

        def blocks(q, k, v):
            return xla_attention(q, k, v, seg)

        grads = {name: jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * v),
                                        argnums=(0, 1, 2)))
                 for name, f in (("dense", dense), ("blocks", blocks))}
        times = {name: time_fn(g, q, k, v, repeats=args.repeats) for name, g in grads.items()}
        print(f"| {b} x {t} | {times['dense']:.3f} | {times['blocks']:.3f} | "
              f"{times['dense'] / times['blocks']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
