"""`layers.swiglu` (written-out backward) against JAX's derived gradient of the same SwiGLU,
forward + backward, same run, with a float32 matmul for the machine's rate.

    python benchmarks/swiglu.py [--shapes 4096x512x1408] [--repeats 5]

Shapes are rows x width x hidden (default: the peer benchmark's decoder FFN at 8 x 512 tokens),
float32. Prints median times, the ratio, and each side's FLOP/s as a share of the matmul's
(9 matmuls of 2 x rows x width x hidden FLOPs: 3 forward, 6 backward).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import header, time_fn  # noqa: E402
from mm1_jax.models import layers  # noqa: E402
from mm1_jax.perf import measure_matmul_flops  # noqa: E402


def derived(x, wg, wu, wd):
    return jnp.dot(jax.nn.silu(jnp.dot(x, wg)) * jnp.dot(x, wu), wd)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="4096x512x1408")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(header("SwiGLU forward + backward (benchmarks/swiglu.py)"))
    rate = measure_matmul_flops(repeats=args.repeats)
    print(f"# float32 2048^3 matmul: {rate / 1e9:.1f} GFLOP/s")
    print("| rows x width x hidden | derived (s) | layers.swiglu (s) | speed-up | derived / matmul "
          "| swiglu / matmul |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        r, d, f = (int(n) for n in shape.split("x"))
        k = jax.random.split(jax.random.key(0), 5)
        x, dy = jax.random.normal(k[0], (r, d)), jax.random.normal(k[4], (r, d))
        w = [jax.random.normal(k[i], s) / s[0] ** 0.5
             for i, s in ((1, (d, f)), (2, (d, f)), (3, (f, d)))]
        steps = {name: jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) * dy), argnums=(0, 1, 2, 3)))
                 for name, fn in (("derived", derived), ("swiglu", layers.swiglu))}
        t = {name: time_fn(s, x, *w, repeats=args.repeats) for name, s in steps.items()}
        flops = 3 * 2 * 3 * r * d * f
        print(f"| {r} x {d} x {f} | {t['derived']:.3f} | {t['swiglu']:.3f} | "
              f"{t['derived'] / t['swiglu']:.2f}x | {flops / t['derived'] / rate:.0%} | "
              f"{flops / t['swiglu'] / rate:.0%} |", flush=True)


if __name__ == "__main__":
    main()
