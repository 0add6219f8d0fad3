"""Throughput of the full train step (forward, backward, AdamW update; the loop's compiled,
sharded, donated step) on synthetic batches: tokens/s, images/s and MFU.

    python benchmarks/train_step.py [--configs demo_cpu,cpu_100m] [--steps 10]

"CPU s" is the process's CPU time per step: on a machine shared with other jobs, wall time
inflates and CPU time does not (2 cores give at most 2 CPU-s per second).

MFU = model FLOPs per step (mm1_jax.train.metrics.model_flops_per_step: 6N + attention per decoder
position, XLA's count for encoder + connector per real image, fwd+bwd) / step time / peak. On CPU the peak is a 2048^3
float32 matmul measured in the same run (mm1_jax.perf), so MFU reads "fraction of the best XLA
kernel on this machine", not of a data-sheet figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import header  # noqa: E402
from mm1_jax.config import load_config  # noqa: E402
from mm1_jax.startup import start  # noqa: E402
from mm1_jax.train.loop import compile_step, global_batch  # noqa: E402
from mm1_jax.train.metrics import model_flops_per_step, peak_flops  # noqa: E402
from mm1_jax.train.state import abstract_train_state, init_train_state  # noqa: E402
from mm1_jax.data.synthetic import SPECIAL, make_global_batch  # noqa: E402


def bench(name: str, steps: int, warmup: int = 2) -> dict:
    cfg = load_config(f"experiments/{name}.py")
    cfg.data.tokenizer, cfg.evals = None, {}  # synthetic batches
    run = start(cfg, special=SPECIAL, corpus=False)
    mesh = run.mesh
    abstract, shardings = abstract_train_state(run)
    state = init_train_state(run, abstract, shardings)
    batches = [make_global_batch(cfg, 0, i) for i in range(4)]
    images = [int(b.image_mask.sum()) for b in batches]
    batches = [global_batch(b, mesh) for b in batches]
    step, compile_s = compile_step(abstract, shardings, mesh, batches[0])
    times, cpu = [], []
    for i in range(warmup + steps):
        t, c = time.perf_counter(), time.process_time()
        state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    dt = statistics.median(times)
    flops = model_flops_per_step(cfg, run.model.stats, statistics.mean(images))
    peak, source = peak_flops(cfg, mesh.devices.flat)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "config": name, "params": params, "batch": cfg.train.batch_size, "seq": cfg.train.seq_len,
        "max_images": cfg.data.max_images, "compile_s": compile_s, "step_s": dt,
        "step_cpu_s": statistics.median(cpu),
        "tokens_per_s": cfg.train.batch_size * cfg.train.seq_len / dt,
        "images_per_s": statistics.mean(images) / dt, "model_flops_per_s": flops / dt,
        "peak": peak, "peak_source": source, "mfu": flops / dt / peak,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="demo_cpu,cpu_100m")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    print(header("train step (benchmarks/train_step.py)"))
    print(f"# load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| config | params | batch x seq (max images) | compile s | step s (CPU s) | tokens/s | "
          "images/s | model GFLOP/s | peak GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        r = bench(name, args.steps)
        print(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq']} "
              f"({r['max_images']}) | {r['compile_s']:.1f} | {r['step_s']:.3f} ({r['step_cpu_s']:.2f}) | "
              f"{r['tokens_per_s']:,.0f} | {r['images_per_s']:.1f} | "
              f"{r['model_flops_per_s'] / 1e9:.1f} | {r['peak'] / 1e9:.1f} | {r['mfu']:.1%} |",
              flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
