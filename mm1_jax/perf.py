"""Peak FLOP/s for MFU: a table for accelerators, a measurement for CPUs.

A CPU has no spec sheet figure worth quoting, so its "peak" is the FLOP/s of a large float32
matmul measured on the spot; MFU on CPU therefore reads "fraction of what XLA's best kernel gets".
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip (vendor spec sheets, without sparsity).
PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def measure_matmul_flops(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul on the default device (best of `repeats`)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def device_peak_flops(device=None) -> tuple[float, str]:
    """(peak FLOP/s per device, where the figure comes from)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_BF16.items():
        if name.lower() in kind.lower():
            return peak, f"spec sheet ({kind}, bf16 dense)"
    return measure_matmul_flops(), f"measured f32 matmul on {kind or device.platform}"
