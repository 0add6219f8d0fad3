#!/usr/bin/env bash
# The seqio extra's tests, in a venv of their own (.venv-seqio): seqio brings TensorFlow, which
# TensorBoard would then import in every other test, so it stays out of the main .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MM1_VENV="$PWD/.venv-seqio"
source launch/setup_env.sh seqio
python -m pip install -q pytest
exec python -m pytest -q tests/eval/test_seqio_tasks.py "$@"
