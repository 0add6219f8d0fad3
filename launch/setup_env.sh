#!/usr/bin/env bash
# Creates .venv (once) and installs mm1_jax with the extras named in $1 (e.g. "test"), at the
# versions CI tested (constraints.txt; MM1_UNPINNED=1 installs the newest releases instead, to
# try them). Sourced by demo.sh and test.sh so that each is one command on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MM1_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
extras="${1:-}"
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
# torch==2.13.0 is installed from the CPU wheel on these machines; pin it first so that
# transformers does not pull a CUDA build.
if [[ "$extras" == *test* ]]; then
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
fi
pins=(-c "$root/constraints.txt")
[ "${MM1_UNPINNED:-0}" = 1 ] && pins=()
"$venv/bin/python" -m pip install -q ${pins[@]+"${pins[@]}"} -e "$spec"
if [[ "$extras" == *test* ]]; then
  # OpenCLIP for tests/convert, without its torchvision: the only torchvision wheels for torch
  # 2.13 are CUDA builds that cannot load beside the CPU torch; the tests import OpenCLIP's ViT
  # without it (tests/convert/helpers.py).
  "$venv/bin/python" -m pip install -q --no-deps ${pins[@]+"${pins[@]}"} "open-clip-torch"
fi
export PATH="$venv/bin:$PATH"
# XLA:CPU allocates a step's temporaries afresh each step (GBs at benchmark sizes), and glibc
# maps them in 4 KiB pages that fault in again every step; with malloc's transparent huge pages
# the CPU train step runs 13-15% faster (BENCHMARKS.md, peer_step). No effect where THP is off,
# none on accelerator memory.
if [[ "${GLIBC_TUNABLES:-}" != *glibc.malloc.hugetlb* ]]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
fi
