#!/usr/bin/env bash
# One command: install, build the embedded demo corpus, train the tiny MM1 on CPU, evaluate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source launch/setup_env.sh
exec python -m mm1_jax.train --config=experiments/demo_cpu.py --workdir="${WORKDIR:-workdir/demo}" "$@"
