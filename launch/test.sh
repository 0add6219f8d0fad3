#!/usr/bin/env bash
# One command: install mm1_jax with its test and tpu extras and run the default (non-slow) test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source launch/setup_env.sh test,tpu  # tpu: libtpu, for the TPU-topology compiles (no TPU needed)
# pytest.ini deselects the tests marked slow; `-m slow` (as .ci/run passes) selects them.
exec python -m pytest -n "${PYTEST_WORKERS:-2}" -q "$@"
