"""MoE layer step time relative to a dense SwiGLU FFN with the same FLOPs per token.

Top-2 routing runs two F-wide experts per token, so the baseline is one dense SwiGLU with hidden
2F. Each row times a jitted forward+backward (gradients for parameters and input) of the MoE
layer and of the baseline, interleaved run by run so that load from other processes affects
both alike, and reports the ratio of medians. The router and aux losses are part of the step.

  python benchmarks/moe_layer.py                      # D=512, F=1024, 8192 tokens, float32
  python benchmarks/moe_layer.py --write benchmarks/results/moe.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from mm1_jax.config import base_config, expert_mlp_dim
from mm1_jax.models.moe import MoEFeedForward, capacity, group_shape

# (experts, mode, group_size, tokens; None = --tokens). The capacity path dispatches by indices
# (gathers into [E, G, C, D]); its cost should track its matmuls at any expert count. On CPU,
# XLA lowers ragged_dot (the dropless path) to a dense dot over an [E, rows, K] masked copy of
# the input: 64 experts at 8192 tokens need ~30 GB, so that row runs at 1024 tokens (with its
# own baseline at 1024 tokens).
ROWS = ((8, "capacity", 4096, None), (8, "dropless", 4096, None),
        (64, "capacity", 4096, None), (64, "capacity", 1024, None),
        (64, "dropless", 4096, 1024))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_model()}, {os.cpu_count()} cores, {jax.devices()[0].platform}, "
            f"jax {jax.__version__}, load average {load:.1f} at start")


def dense_step(d: int, hidden: int, key):
    k0, k1, k2 = jax.random.split(key, 3)
    params = {"wi_0": jax.random.normal(k0, (d, hidden)) / d**0.5,
              "wi_1": jax.random.normal(k1, (d, hidden)) / d**0.5,
              "wo": jax.random.normal(k2, (hidden, d)) / hidden**0.5}

    def loss(p, x, r):
        y = (jax.nn.silu(x @ p["wi_0"]) * (x @ p["wi_1"])) @ p["wo"]
        return jnp.sum(y * r)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params


def moe_step(cfg):
    d, m = cfg.model.decoder, cfg.model.moe
    graphdef, params = nnx.split(MoEFeedForward(m, width=d.width, mlp_dim=expert_mlp_dim(d, m),
                                                dtype=jnp.dtype(cfg.model.dtype),
                                                param_dtype=jnp.float32, rngs=nnx.Rngs(0)))

    def loss(p, x, r):
        y, stats = nnx.merge(graphdef, p)(x)
        return (jnp.sum(y * r) + m.load_balance_coef * stats["load_balance_loss"]
                + m.z_loss_coef * stats["z_loss"])

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params


def make_inputs(d: int, f: int, tokens: int):
    """Jitted dense baseline (warmed up), its parameters, and [B, S, D] inputs for `tokens`."""
    seq = 2048 if tokens % 2048 == 0 else tokens
    kx, kr, kp = jax.random.split(jax.random.key(tokens), 3)
    x = jax.random.normal(kx, (tokens // seq, seq, d), jnp.float32)
    r = jax.random.normal(kr, x.shape, jnp.float32)
    dense, params = dense_step(d, 2 * f, kp)
    timed(dense, params, x, r)
    return dense, params, x, r


def timed(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--f", type=int, default=1024, help="expert hidden size F")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row after one warm-up")
    ap.add_argument("--write", default=None, help="markdown file for the results")
    args = ap.parse_args()
    host = machine()
    print(f"{datetime.date.today()} | {host}")

    header = (f"D={args.d}, F={args.f}, top-2, float32, capacity_factor 1.25; baseline: dense "
              f"SwiGLU with hidden 2F={2 * args.f} on the same tokens; jit forward+backward "
              f"(parameter and input gradients), median of {args.runs} runs after 1 warm-up")
    lines = ["| experts | mode | tokens | group size | capacity | MoE step (s) | dense step (s) "
             "| MoE / dense |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    print(header, *lines[:2], sep="\n")
    baselines = {}
    for e, mode, gs, tokens in ROWS:
        tokens = tokens or args.tokens
        if tokens not in baselines:
            baselines[tokens] = make_inputs(args.d, args.f, tokens)
        dense, dense_params, x, r = baselines[tokens]
        cfg = base_config()
        cfg.model.dtype = "float32"  # CPUs have no fast bf16 matmul; a bf16 row would time emulation
        cfg.model.decoder.width = args.d
        m = cfg.model.moe
        m.num_experts, m.expert_mlp_dim, m.mode, m.group_size = e, args.f, mode, gs
        s = group_shape(x.shape[1], gs)[1]  # groups never span rows (moe.py)
        cap = capacity(s, e, 2, m.capacity_factor)
        prefix = (f"| {e} | {mode} | {tokens} | {s if mode == 'capacity' else '-'} | "
                  f"{cap if mode == 'capacity' else '-'} |")
        step, params = moe_step(cfg)
        try:
            timed(step, params, x, r)
        except jax.errors.JaxRuntimeError as err:  # the CPU ragged_dot lowering at 64 experts
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            row = f"{prefix} out of memory | - | - |"
        else:
            t_moe, t_dense = [], []
            for _ in range(args.runs):
                t_dense.append(timed(dense, dense_params, x, r))
                t_moe.append(timed(step, params, x, r))
            tm, td = statistics.median(t_moe), statistics.median(t_dense)
            row = f"{prefix} {tm:.3f} | {td:.3f} | {tm / td:.2f} |"
        del step, params
        lines.append(row)
        print(row, flush=True)

    if args.write:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(args.write, "w") as fh:
            fh.write("# MoE layer: step time relative to a dense FFN of equal FLOPs\n\n")
            fh.write(f"- date: {stamp}\n- machine: {host}\n")
            fh.write(f"- command: `python benchmarks/moe_layer.py --runs {args.runs}"
                     f" --write {args.write}`\n- setup: {header}\n\n")
            fh.write("\n".join(lines) + "\n")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
