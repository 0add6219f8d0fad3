"""Exact resume after SIGKILL, pre-emption by SIGTERM, and interrupted checkpoints, through
`python -m mm1_jax.train` on experiments/demo_cpu.py and the demo corpus."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mm1_jax.config import base_config
from mm1_jax.checkpoint import Checkpointer
from tests.train.conftest import ROOT, run_python

STEPS, EVERY = 20, 10


def _args(workdir, demo_data, compile_cache):
    return ["-m", "mm1_jax.train", "--config=experiments/demo_cpu.py", f"--workdir={workdir}",
            f"--config.train.steps={STEPS}", f"--config.checkpoint.every={EVERY}",
            "--config.train.log_every=1", f"--config.data.dir={demo_data}",
            f"--config.data.tokenizer={demo_data}/tokenizer.model",
            f"--config.train.compile_cache_dir={compile_cache}"]


def _popen(args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss/total"] for r in rows}


def _params(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    with ocp.StandardCheckpointer() as c:
        return jax.device_get(c.restore(path))["params"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, demo_data, compile_cache):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    run_python(_args(workdir, demo_data, compile_cache))
    return workdir


def _wait_for(predicate, proc, what, timeout=300):
    t = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stderr.read()[-4000:]}")
        if time.time() - t > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_exact_resume_after_sigkill(uninterrupted, tmp_path, demo_data, compile_cache):
    workdir = str(tmp_path)
    proc = _popen(_args(workdir, demo_data, compile_cache))
    # Orbax renames <step>.orbax-checkpoint-tmp-* to <step> only once every item is written.
    _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", str(EVERY))), proc,
              f"checkpoint {EVERY}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(_losses(workdir)) < STEPS, "killed too late to test anything"
    restart = run_python(_args(workdir, demo_data, compile_cache))
    assert f"starting at step {EVERY} of {STEPS}" in restart.stderr
    want, got = _losses(uninterrupted), _losses(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in got] == [want[s] for s in got]  # bitwise, every step
    jax.tree.map(np.testing.assert_array_equal, _params(uninterrupted, STEPS), _params(workdir, STEPS))


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_restart_continues(uninterrupted, tmp_path,
                                                                   demo_data, compile_cache):
    workdir = str(tmp_path)
    proc = _popen(_args(workdir, demo_data, compile_cache))
    jsonl = os.path.join(workdir, "metrics.jsonl")
    _wait_for(lambda: os.path.exists(jsonl) and len(open(jsonl).readlines()) >= 3, proc, "step 3")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = int(stderr.split("stopped (pre-empted) at step ")[1].split(";")[0])
    assert 3 <= stopped < EVERY
    assert sorted(int(os.path.basename(p)) for p in
                  glob.glob(os.path.join(workdir, "checkpoints", "*"))) == [stopped]
    restart = run_python(_args(workdir, demo_data, compile_cache))
    assert f"starting at step {stopped} of {STEPS}" in restart.stderr
    want, got = _losses(uninterrupted), _losses(workdir)
    assert [got[s] for s in range(1, STEPS + 1)] == [want[s] for s in range(1, STEPS + 1)]


def test_a_checkpoint_cut_off_mid_write_is_never_restored(tmp_path):
    directory = str(tmp_path / "checkpoints")
    p = run_python(["tests/train/interrupted_save.py", directory], check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert os.listdir(directory) != ["1"], "the save finished before the kill; nothing tested"
    assert any(name.startswith("2.orbax-checkpoint-tmp") for name in os.listdir(directory))
    cfg = base_config()
    ckpt = Checkpointer(directory, cfg)
    assert ckpt.latest_step() == 1
    with ocp.StandardCheckpointer() as c:
        restored = c.restore(os.path.join(directory, "1", "state"))
    np.testing.assert_array_equal(restored["params"]["w"], np.ones(1000))
    deadline = time.time() + 30  # Orbax removes the leftovers in the background
    while sorted(os.listdir(directory)) != ["1"] and time.time() < deadline:
        time.sleep(0.1)
    assert sorted(os.listdir(directory)) == ["1"]
    ckpt.close()
