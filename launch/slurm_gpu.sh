#!/usr/bin/env bash
# A GPU cluster under SLURM: writes the batch script (one task per node, all its GPUs to that
# task) and submits it. Inside, `--distributed` calls jax.distributed.initialize(), which reads
# the coordinator, process count and index from SLURM's environment.
#
#   launch/slurm_gpu.sh [--dry-run]
#
# Settings (environment): NODES, GPUS_PER_NODE, PARTITION, TIME, CONFIG, WORKDIR (shared
# storage), ARGS, VENV (a venv on shared storage, made here with the tested versions if absent).
# --dry-run prints the batch script and the sbatch command instead of submitting.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi

NODES="${NODES:-16}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
PARTITION="${PARTITION:-gpu}"
TIME="${TIME:-72:00:00}"
CONFIG="${CONFIG:-experiments/mm1_3b_moe.py}"
WORKDIR="${WORKDIR:-$PWD/workdir/$(basename "$CONFIG" .py)}"
ARGS="${ARGS:-}"
VENV="${VENV:-$PWD/.venv-gpu}"
script="${SCRIPT:-$PWD/workdir/mm1_slurm.sbatch}"

body="#!/usr/bin/env bash
#SBATCH --job-name=mm1
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS_PER_NODE
#SBATCH --partition=$PARTITION
#SBATCH --time=$TIME
#SBATCH --output=$WORKDIR/slurm-%j.log
set -euo pipefail
cd $PWD
if [ ! -x $VENV/bin/python ]; then
  python3 -m venv $VENV
  $VENV/bin/pip install -q -c constraints.txt 'jax[cuda12]' -e .
fi
srun $VENV/bin/python -m mm1_jax.train --config=$CONFIG --workdir=$WORKDIR --distributed${ARGS:+ $ARGS}"

if [ "$dry" = 1 ]; then
  echo "# $script"
  echo "$body"
  echo "mkdir -p $WORKDIR"
  echo "sbatch $script"
else
  mkdir -p "$(dirname "$script")" "$WORKDIR"
  echo "$body" > "$script"
  sbatch "$script"
fi
