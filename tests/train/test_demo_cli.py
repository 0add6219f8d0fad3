"""The one-command demo: `python -m mm1_jax.train --config=experiments/demo_cpu.py`, no other
flags, in an empty directory, builds the corpus and trains all 400 steps on 2 CPU cores."""

import json
import os
import subprocess
import sys

import pytest

from tests.train.conftest import ROOT


@pytest.mark.slow
def test_demo_trains_to_completion_with_no_flags(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "mm1_jax.train",
                        f"--config={ROOT}/experiments/demo_cpu.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "finished at step 400" in p.stderr
    workdir = tmp_path / "workdir" / "demo_cpu"
    assert sorted(os.listdir(workdir / "checkpoints")) == ["300", "400"]  # keep = 2
    rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(10, 401, 10))
    first, last = rows[0], rows[-10:]
    # It learns: captions of 8x8 digits become nearly predictable; from ln(1024) = 6.9.
    assert first["loss/total"] > 5.0
    caption = [r["loss/caption"] for r in last if "loss/caption" in r]
    assert caption and max(caption) < 1.0, caption
