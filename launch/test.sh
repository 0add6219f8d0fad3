#!/usr/bin/env bash
# One command: install mm1_jax with its test and tpu extras and run the default (non-slow) test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source launch/setup_env.sh test,tpu  # tpu: libtpu, for the TPU-topology compiles (no TPU needed)
exec python -m pytest -m "not slow" -n "${PYTEST_WORKERS:-2}" -q "$@"
