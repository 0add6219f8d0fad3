"""Per-chip memory of the trainer's step compiled for TPU topologies at a fixed per-chip batch:
a layout that loses its sharding grows with the chip count. Needs libtpu (the `tpu` extra),
no TPU.

    python benchmarks/layout_memory.py [--topologies v5p-8,v5p-32] [--attention auto]

The dense config is `tests/test_layout.py`'s (2 rows per chip, FSDP over every chip, remat
none); the MoE variant makes every second FFN an 8-expert MoE on a 4-way expert axis. The last
column compiles the same step without libtpu's collective-matmul loops (`aot.NO_COLLECTIVE_
MATMULS`), whose buffers appear only where FSDP is wide enough for libtpu to choose them.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import header  # noqa: E402
from mm1_jax.aot import (NO_COLLECTIVE_MATMULS, SHARE_LIBTPU, compile_train_step,  # noqa: E402
                         topology_devices)
from tests.test_layout import small_config  # noqa: E402


def config(chips: int, moe: bool, attention: str | None):
    c = small_config(chips, moe)
    if attention:
        c.model.attention = attention
    return c


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topologies", default="v5p-8,v5p-32")
    p.add_argument("--attention", default=None, help="model.attention (default: the config's)")
    args = p.parse_args()
    os.environ.setdefault(*SHARE_LIBTPU)
    print(header("per-chip memory at 2 rows per chip (benchmarks/layout_memory.py)"))
    print("| decoder | topology (chips) | attention | arguments MB | temporaries MB "
          "| temporaries MB, no collective matmuls |")
    print("|---|---|---|---|---|---|")
    for moe in (False, True):
        for name in args.topologies.split(","):
            devices = topology_devices(name)
            cfg = config(len(devices), moe, args.attention)
            m = compile_train_step(cfg, devices)[0].memory_analysis()
            plain = compile_train_step(cfg, devices, NO_COLLECTIVE_MATMULS)[0].memory_analysis()
            print(f"| {'MoE' if moe else 'dense'} | {name} ({len(devices)}) | "
                  f"{cfg.model.get('attention', 'xla')} | {m.argument_size_in_bytes / 1e6:.1f} | "
                  f"{m.temp_size_in_bytes / 1e6:.1f} | {plain.temp_size_in_bytes / 1e6:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
