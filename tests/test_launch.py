"""launch/*.sh --dry-run: the exact commands each step would run."""

from __future__ import annotations

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), "--dry-run", *args],
                         env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **env},
                         capture_output=True, text=True, check=True, cwd="/")
    return out.stdout.splitlines()


TPU = dict(TPU_NAME="pod", ZONE="us-east5-a", TPU_TYPE="v5p-256", PROJECT="proj",
           CONFIG="experiments/mm1_3b.py", WORKDIR="gs://b/run", ARGS="--config.train.steps=10")
SSH_ALL = "gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --project=proj --worker=all"


@pytest.mark.parametrize("step, expected", [
    ("create", ["gcloud compute tpus tpu-vm create pod --zone=us-east5-a --project=proj "
                "--accelerator-type=v5p-256 --version=v2-alpha-tpuv5"]),
    ("copy", ["git archive --format=tar.gz --output=/tmp/mm1_jax.tar.gz HEAD",
              "gcloud compute tpus tpu-vm scp /tmp/mm1_jax.tar.gz pod:mm1_jax.tar.gz "
              "--zone=us-east5-a --project=proj --worker=all",
              f'{SSH_ALL} --command="rm -rf mm1_jax && mkdir mm1_jax && '
              'tar -xzf mm1_jax.tar.gz -C mm1_jax"']),
    ("install", [f'{SSH_ALL} --command="cd mm1_jax && python3 -m venv .venv && '
                 ".venv/bin/pip install -q -c constraints.txt -e '.[tpu]'\""]),
    ("run", [f'{SSH_ALL} --command="cd mm1_jax && nohup .venv/bin/python -m mm1_jax.train '
             "--config=experiments/mm1_3b.py --workdir=gs://b/run --distributed "
             '--config.train.steps=10 > train.log 2>&1 &"']),
    ("logs", ["gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --project=proj --worker=0 "
              '--command="tail -n 100 -f mm1_jax/train.log"']),
    ("delete", ["gcloud compute tpus tpu-vm delete pod --zone=us-east5-a --project=proj --quiet"]),
])
def test_tpu_vm(step, expected):
    assert dry_run("tpu_vm.sh", step, **TPU) == expected


XPK = dict(CLUSTER="c", WORKLOAD="w", ZONE="us-east5-a", TPU_TYPE="v5p-256", NUM_SLICES="2",
           CONFIG="experiments/mm1_3b.py", WORKDIR="gs://b/run")


@pytest.mark.parametrize("step, expected", [
    ("cluster", ["xpk cluster create --cluster=c --tpu-type=v5p-256 --num-slices=2 "
                 "--zone=us-east5-a"]),
    ("run", ["xpk workload create --cluster=c --workload=w --tpu-type=v5p-256 --num-slices=2 "
             "--zone=us-east5-a --base-docker-image=python:3.11-slim --script-dir=. "
             "--command=\"pip install -q -c constraints.txt -e '.[tpu]' && python -m "
             'mm1_jax.train --config=experiments/mm1_3b.py --workdir=gs://b/run --distributed"']),
    ("logs", ["kubectl logs -f --tail=100 --max-log-requests=1 --selector=jobset.sigs.k8s.io/"
              "jobset-name=w,batch.kubernetes.io/job-completion-index=0"]),
    ("delete", ["xpk workload delete --cluster=c --workload=w --zone=us-east5-a"]),
    ("delete-cluster", ["xpk cluster delete --cluster=c --zone=us-east5-a"]),
])
def test_gke_xpk(step, expected):
    assert dry_run("gke_xpk.sh", step, **XPK) == expected


def test_slurm_gpu(tmp_path):
    lines = dry_run("slurm_gpu.sh", NODES="4", GPUS_PER_NODE="8", PARTITION="a100",
                    CONFIG="experiments/mm1_7b.py", WORKDIR="/shared/run", VENV="/shared/venv",
                    SCRIPT="/shared/mm1.sbatch")
    assert lines[0] == "# /shared/mm1.sbatch"
    assert "#SBATCH --nodes=4" in lines and "#SBATCH --ntasks-per-node=1" in lines
    assert "#SBATCH --gpus-per-node=8" in lines and "#SBATCH --partition=a100" in lines
    assert "  /shared/venv/bin/pip install -q -c constraints.txt 'jax[cuda12]' -e ." in lines
    # One process per node; jax.distributed.initialize() (--distributed) reads SLURM's variables.
    assert ("srun /shared/venv/bin/python -m mm1_jax.train --config=experiments/mm1_7b.py "
            "--workdir=/shared/run --distributed") in lines
    assert lines[-2:] == ["mkdir -p /shared/run", "sbatch /shared/mm1.sbatch"]


def test_unknown_step_fails():
    r = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_vm.sh"), "--dry-run", "up"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "create|copy|install|run|logs|delete" in r.stderr
