"""Two JAX processes (jax.distributed over localhost) train demo_cpu through the CLI, each
reading its own data shard, and match one process fed the same global batch; both then evaluate
on the training mesh (no process gathers the parameters) and match the one process's results."""

import json
import os
import signal
import subprocess
import sys
import time

import portpicker
import pytest

from tests.train.conftest import ROOT, run_python

STEPS = 4


def _losses(workdir):
    return [json.loads(l)["loss/total"] for l in open(os.path.join(workdir, "metrics.jsonl"))]


def _two_processes(workdir, demo_data, compile_cache, steps, every):
    port = portpicker.pick_unused_port()
    env = dict(os.environ, PYTHONPATH=ROOT,
               XLA_FLAGS=os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=1")
    return [subprocess.Popen(
        [sys.executable, "-m", "mm1_jax.train", "--config=experiments/demo_cpu.py",
         f"--workdir={workdir}", f"--config.train.steps={steps}", "--config.train.log_every=1",
         f"--config.checkpoint.every={every}", f"--config.data.dir={demo_data}",
         f"--config.data.tokenizer={demo_data}/tokenizer.model",
         f"--config.train.compile_cache_dir={compile_cache}", "--config.evals.demo.limit=16",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, demo_data, compile_cache):
    multi = str(tmp_path / "two_processes")
    procs = _two_processes(multi, demo_data, compile_cache, STEPS, 2)
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
    # The end-of-run evaluation (generation and perplexity) ran across both processes.
    multi_eval = json.load(open(os.path.join(multi, "eval.json")))
    single_eval = json.load(open(os.path.join(single, "eval.json")))
    assert multi_eval["step"] == single_eval["step"] == STEPS
    assert multi_eval == pytest.approx(single_eval, rel=1e-4)


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_the_same_step(tmp_path, demo_data, compile_cache):
    # A scheduler pre-empting a job signals every process; JAX's pre-emption service (not a
    # Python handler) agrees on one step, at which both save and exit.
    workdir = str(tmp_path)
    procs = _two_processes(workdir, demo_data, compile_cache, 200, 100)
    jsonl = os.path.join(workdir, "metrics.jsonl")
    t = time.time()
    while not (os.path.exists(jsonl) and len(open(jsonl).readlines()) >= 3):
        assert all(p.poll() is None for p in procs) and time.time() - t < 300
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    stopped = []
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"process {i}:\n{err[-4000:]}"
        stopped.append(int(err.split("stopped (pre-empted) at step ")[1].split(";")[0]))
    assert stopped[0] == stopped[1] and 3 <= stopped[0] < 100
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped[0])]
