#!/usr/bin/env bash
# A Cloud TPU VM pod slice, start to finish: create it, copy this checkout to every worker,
# install with the tested versions (constraints.txt), train on all workers, follow the logs,
# delete it. One step per call, so a failed step can be re-run alone:
#
#   launch/tpu_vm.sh [--dry-run] create|copy|install|run|logs|delete
#
# Settings (environment): TPU_NAME, ZONE, TPU_TYPE (Cloud TPU name, e.g. v5p-256: check it fits
# first with `python -m mm1_jax.aot --topology=$TPU_TYPE`), TPU_RUNTIME, PROJECT (optional),
# CONFIG (experiments/<x>.py), WORKDIR (a gs:// path every worker can write), ARGS (more
# --config.key=value flags). --dry-run prints the exact commands instead of running them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
step="${1:?usage: launch/tpu_vm.sh [--dry-run] create|copy|install|run|logs|delete}"

TPU_NAME="${TPU_NAME:-mm1-pod}"
ZONE="${ZONE:-us-east5-a}"
TPU_TYPE="${TPU_TYPE:-v5p-256}"
TPU_RUNTIME="${TPU_RUNTIME:-v2-alpha-tpuv5}"
CONFIG="${CONFIG:-experiments/mm1_3b_moe.py}"
WORKDIR="${WORKDIR:-gs://YOUR_BUCKET/mm1/$(basename "$CONFIG" .py)}"
ARGS="${ARGS:-}"
project=()
[ -n "${PROJECT:-}" ] && project=(--project="$PROJECT")

source launch/dry_run.sh
tpu=(gcloud compute tpus tpu-vm)
on_all() { run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" --worker=all --command="$1"; }

case "$step" in
  create)
    run "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" "${project[@]}" \
      --accelerator-type="$TPU_TYPE" --version="$TPU_RUNTIME" ;;
  copy)  # the committed tree only (git archive), the same on every worker
    run git archive --format=tar.gz --output=/tmp/mm1_jax.tar.gz HEAD
    run "${tpu[@]}" scp /tmp/mm1_jax.tar.gz "$TPU_NAME":mm1_jax.tar.gz --zone="$ZONE" \
      "${project[@]}" --worker=all
    on_all "rm -rf mm1_jax && mkdir mm1_jax && tar -xzf mm1_jax.tar.gz -C mm1_jax" ;;
  install)
    on_all "cd mm1_jax && python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'" ;;
  run)  # every worker runs the same command; jax.distributed.initialize() finds the others
    on_all "cd mm1_jax && nohup .venv/bin/python -m mm1_jax.train --config=$CONFIG --workdir=$WORKDIR --distributed${ARGS:+ $ARGS} > train.log 2>&1 &" ;;
  logs)  # process 0 logs for the whole run
    run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" --worker=0 \
      --command="tail -n 100 -f mm1_jax/train.log" ;;
  delete)
    run "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" "${project[@]}" --quiet ;;
  *) echo "unknown step '$step': create|copy|install|run|logs|delete" >&2; exit 2 ;;
esac
