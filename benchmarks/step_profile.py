"""Where the peer benchmark's train step spends its time: a `jax.profiler` trace of one step,
each thunk mapped to its source through XLA's optimised HLO, op time summed by part.

    python benchmarks/step_profile.py [--case dense|moe] [--top 15]

The step is `benchmarks/peer_step.py`'s (same dimensions, same config). Op times overlap where
XLA:CPU runs thunks side by side, so they sum to more than the step; "idle" is the core time
that runs no op (cores x step - op time).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

DUMP = tempfile.mkdtemp(prefix="step_profile_")
# Before JAX starts: XLA writes the optimised HLO, which names every thunk's source op.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP}"
                           " --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$")

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import peer_step  # noqa: E402
from benchmarks.common import header  # noqa: E402

# (part, pattern on the source op name), first match wins; matmuls are XLA:CPU's ynn fusions.
PARTS = (
    ("head + loss", r"bnd,dv|bnv|bnd,bnv|head_loss"),
    ("FFN", r"\.\.\.m,mh|\.\.\.h,hm|\.\.\.h,mh|\.\.\.m,hm|\.\.\.m,\.\.\.h|\.\.\.h,\.\.\.m|swiglu"),
    ("MoE dispatch / combine", r"take_along_axis|scatter|gather|gskm|erm|erh"),
    ("attention", r"btgrk|bgrts|bsgk|attention|softmax|_where"),
    ("scan buffers (dynamic-update-slice)", r"dynamic_update_slice"),
)


def source_ops(dump: str) -> dict[str, str]:
    """Thunk (HLO instruction) name -> its source op name, from the train step's HLO."""
    path = max(glob.glob(f"{dump}/*train_step*after_optimizations.txt"), key=os.path.getsize)
    text = open(path).read()
    return {m.group(1): m.group(2) for m in re.finditer(
        r"^\s+%([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]*)\"", text, re.M)}


def op_times(trace_dir: str) -> dict[str, float]:
    """Thunk name -> microseconds in the trace (complete events only)."""
    path = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)[0]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(
                ("ThunkExecutor", "$", "SlinkyThreadPool")):
            total[e["name"]] += e["dur"]
    return total


def part_of(name: str, op: str) -> str:
    if "dynamic-update-slice" in name:
        return PARTS[-1][0]
    kind = "matmul" if name.startswith("ynn_fusion") else "other ops"
    for part, pattern in PARTS[:-1]:
        if re.search(pattern, op):
            return f"{part}: {kind}"
    return f"{'inside the layer scan' if '/while/' in op else 'outside the layers'}: {kind}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", default="dense", choices=("dense", "moe"))
    p.add_argument("--top", type=int, default=15, help="thunks listed by time")
    args = p.parse_args()
    once = peer_step.ours_lm(args.case == "moe", "capacity")
    for _ in range(2):
        once()
    t = time.perf_counter()
    for _ in range(3):
        once()
    step = (time.perf_counter() - t) / 3
    trace_dir = os.path.join(DUMP, "trace")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        once()
    ops, source = op_times(trace_dir), source_ops(DUMP)
    parts = collections.Counter()
    for name, us in ops.items():
        parts[part_of(name, source.get(name, ""))] += us
    total = sum(ops.values()) / 1e6
    cores = os.cpu_count()
    print(header(f"train step profile, {args.case} (benchmarks/step_profile.py)"))
    print(f"# step {step:.2f} s (mean of 3); op time {total:.2f} s on {cores} cores; "
          f"idle core time {max(0.0, 1 - total / (cores * step)):.0%}")
    print("| part | op time s | share of op time |")
    print("|---|---|---|")
    for part, us in parts.most_common():
        print(f"| {part} | {us / 1e6:.2f} | {us / 1e6 / total:.0%} |")
    print(f"\n| top thunks | ms | source op |\n|---|---|---|")
    for name, us in ops.most_common(args.top):
        print(f"| {name} | {us / 1e3:.1f} | {source.get(name, '?')[-70:]} |")


if __name__ == "__main__":
    main()
