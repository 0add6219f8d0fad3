#!/usr/bin/env bash
# One command: install, build the embedded demo corpus, train the tiny MM1 on CPU, evaluate
# (python -m mm1_jax.demo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source launch/setup_env.sh
exec python -m mm1_jax.demo --workdir="${WORKDIR:-workdir/demo}" "$@"
