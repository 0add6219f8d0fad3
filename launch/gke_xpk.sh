#!/usr/bin/env bash
# The same run on GKE through xpk (github.com/AI-Hypercomputer/xpk): a cluster of TPU slices,
# a workload whose image holds this checkout (xpk builds it from --script-dir), its logs, and
# clean-up. One step per call:
#
#   launch/gke_xpk.sh [--dry-run] cluster|run|logs|delete|delete-cluster
#
# Settings (environment): CLUSTER, WORKLOAD, ZONE, TPU_TYPE (e.g. v5p-256), NUM_SLICES,
# PROJECT (optional), CONFIG, WORKDIR (gs://), ARGS, BASE_IMAGE. --dry-run prints the commands.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
step="${1:?usage: launch/gke_xpk.sh [--dry-run] cluster|run|logs|delete|delete-cluster}"

CLUSTER="${CLUSTER:-mm1-cluster}"
WORKLOAD="${WORKLOAD:-mm1-run}"
ZONE="${ZONE:-us-east5-a}"
TPU_TYPE="${TPU_TYPE:-v5p-256}"
NUM_SLICES="${NUM_SLICES:-1}"
CONFIG="${CONFIG:-experiments/mm1_3b_moe.py}"
WORKDIR="${WORKDIR:-gs://YOUR_BUCKET/mm1/$(basename "$CONFIG" .py)}"
ARGS="${ARGS:-}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
project=()
[ -n "${PROJECT:-}" ] && project=(--project="$PROJECT")

source launch/dry_run.sh

case "$step" in
  cluster)
    run xpk cluster create --cluster="$CLUSTER" --tpu-type="$TPU_TYPE" \
      --num-slices="$NUM_SLICES" --zone="$ZONE" "${project[@]}" ;;
  run)  # one pod per TPU host; jax.distributed.initialize() reads the JobSet's environment
    run xpk workload create --cluster="$CLUSTER" --workload="$WORKLOAD" \
      --tpu-type="$TPU_TYPE" --num-slices="$NUM_SLICES" --zone="$ZONE" "${project[@]}" \
      --base-docker-image="$BASE_IMAGE" --script-dir=. \
      --command="pip install -q -c constraints.txt -e '.[tpu]' && python -m mm1_jax.train --config=$CONFIG --workdir=$WORKDIR --distributed${ARGS:+ $ARGS}" ;;
  logs)  # the first pod of the JobSet (process 0)
    run kubectl logs -f --tail=100 --max-log-requests=1 \
      --selector="jobset.sigs.k8s.io/jobset-name=$WORKLOAD,batch.kubernetes.io/job-completion-index=0" ;;
  delete)
    run xpk workload delete --cluster="$CLUSTER" --workload="$WORKLOAD" --zone="$ZONE" "${project[@]}" ;;
  delete-cluster)
    run xpk cluster delete --cluster="$CLUSTER" --zone="$ZONE" "${project[@]}" ;;
  *) echo "unknown step '$step': cluster|run|logs|delete|delete-cluster" >&2; exit 2 ;;
esac
