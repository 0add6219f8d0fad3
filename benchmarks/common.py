"""Shared by the benchmark scripts: machine description and timing."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time


def machine() -> str:
    """'<CPU model>, <n> cores[, <accelerator>]' for the results tables."""
    import jax

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = jax.devices()[0]
    accel = "" if dev.platform == "cpu" else f", {dev.device_kind} x{jax.device_count()}"
    return f"{cpu}, {os.cpu_count()} cores{accel}"


def header(title: str) -> str:
    import jax

    return (f"# {title}\n# date: {datetime.date.today()}  machine: {machine()}  "
            f"jax {jax.__version__}")


def time_fn(fn, *args, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds of fn(*args) (blocking on its result) after warm-up runs."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)
