"""Checkpoint save and restore throughput of the trainer's Checkpointer (Orbax), divided by a
plain sequential write / read of the same bytes to the same disk in the same run.

    python benchmarks/checkpoint_io.py [--configs demo_cpu,cpu_100m] [--dir /tmp/ckpt_bench]

The state is a real TrainState (float32 params + AdamW moments). "save (blocking)" is the time
the training loop is held up by an asynchronous save; "save (total)" runs until the checkpoint
is committed (renamed into place). Neither side calls fsync, so both measure the page cache
plus whatever the kernel writes back meanwhile; each figure is the median of `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import header  # noqa: E402
from mm1_jax.config import load_config  # noqa: E402
from mm1_jax.checkpoint import Checkpointer  # noqa: E402
from mm1_jax.startup import start  # noqa: E402
from mm1_jax.train.state import abstract_train_state, init_train_state  # noqa: E402
from mm1_jax.data.synthetic import SPECIAL  # noqa: E402


def plain_write_read(arrays: list[np.ndarray], path: str) -> tuple[float, float]:
    """Seconds to write every array's bytes sequentially into one file, and to read them back."""
    t = time.perf_counter()
    with open(path, "wb") as f:
        for a in arrays:
            f.write(memoryview(np.ascontiguousarray(a)).cast("B"))
    write = time.perf_counter() - t
    out = [np.empty_like(a) for a in arrays]
    t = time.perf_counter()
    with open(path, "rb") as f:
        for a in out:
            f.readinto(memoryview(a).cast("B"))
    read = time.perf_counter() - t
    os.remove(path)
    return write, read


def bench(name: str, directory: str, repeats: int) -> dict:
    cfg = load_config(f"experiments/{name}.py")
    cfg.checkpoint.every, cfg.checkpoint.keep = 1, 1
    cfg.data.tokenizer, cfg.evals = None, {}  # no corpus needed: the state alone is saved
    run = start(cfg, special=SPECIAL, corpus=False)
    abstract, shardings = abstract_train_state(run)
    state = init_train_state(run, abstract, shardings)
    host = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.arrays()))]
    nbytes = sum(a.nbytes for a in host)
    blocking, total, restore, plain_w, plain_r = [], [], [], [], []
    for i in range(repeats):
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        ckpt = Checkpointer(os.path.join(directory, "checkpoints"), cfg)
        t = time.perf_counter()
        ckpt.save(i + 1, state, None, force=True)
        blocking.append(time.perf_counter() - t)
        ckpt.manager.wait_until_finished()
        total.append(time.perf_counter() - t)
        t = time.perf_counter()
        restored = ckpt.restore(abstract, None)
        jax.block_until_ready(restored.arrays())
        restore.append(time.perf_counter() - t)
        ckpt.close()
        w, r = plain_write_read(host, os.path.join(directory, "plain.bin"))
        plain_w.append(w)
        plain_r.append(r)
    shutil.rmtree(directory, ignore_errors=True)
    m = statistics.median
    gb = nbytes / 1e9
    return {"config": name, "gb": gb, "blocking": m(blocking), "save": gb / m(total),
            "restore": gb / m(restore), "plain_write": gb / m(plain_w), "plain_read": gb / m(plain_r)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="demo_cpu,cpu_100m")
    p.add_argument("--dir", default="/tmp/mm1_ckpt_bench")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(header("checkpoint I/O (benchmarks/checkpoint_io.py)"))
    print(f"# load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| config | state GB | save blocking s | save GB/s | plain write GB/s | save / plain | "
          "restore GB/s | plain read GB/s | restore / plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        r = bench(name, args.dir, args.repeats)
        print(f"| {r['config']} | {r['gb']:.3f} | {r['blocking']:.2f} | {r['save']:.2f} | "
              f"{r['plain_write']:.2f} | {r['save'] / r['plain_write']:.2f} | {r['restore']:.2f} | "
              f"{r['plain_read']:.2f} | {r['restore'] / r['plain_read']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
