"""Two JAX processes (jax.distributed over localhost) train demo_cpu through the CLI, each
reading its own data shard, and match one process fed the same global batch."""

import json
import os
import subprocess
import sys

import portpicker
import pytest

from tests.train.conftest import ROOT, run_python

STEPS = 4


def _losses(workdir):
    return [json.loads(l)["loss/total"] for l in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, demo_data, compile_cache):
    port = portpicker.pick_unused_port()
    multi = str(tmp_path / "two_processes")
    env = dict(os.environ, PYTHONPATH=ROOT,
               XLA_FLAGS=os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "mm1_jax.train", "--config=experiments/demo_cpu.py",
         f"--workdir={multi}", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
         "--config.checkpoint.every=2", f"--config.data.dir={demo_data}",
         f"--config.data.tokenizer={demo_data}/tokenizer.model",
         f"--config.train.compile_cache_dir={compile_cache}",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"process {i}:\n{err[-4000:]}"
    assert "over 2 devices (2 processes)" in err
    # Both processes wrote their own data-iterator position into the shared checkpoint.
    written = os.listdir(os.path.join(multi, "checkpoints", str(STEPS), "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(written)

    single = str(tmp_path / "one_process")
    run_python(["tests/train/two_shards.py", single, demo_data, str(STEPS)], devices=2,
               compile_cache=compile_cache)
    assert _losses(multi) == pytest.approx(_losses(single), rel=1e-5)
