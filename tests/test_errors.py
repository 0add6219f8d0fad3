"""One error family (mm1_jax/errors.py): every command prints a user's mistake as one line
naming the key, and exits with status 2; the family's classes are what callers catch."""

import os
import subprocess
import sys

import pytest

from mm1_jax import errors
from mm1_jax.config import ConfigError
from mm1_jax.data.batch import BatchError
from mm1_jax.data.records import RecordError
from mm1_jax.data.tokenizer import TokenizerError
from mm1_jax.eval.readers import EvalDataError
from mm1_jax.models.mm1 import PlaceholderMismatchError
from mm1_jax.train.loop import TrainingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = "--config.model.connector.num_tokens=99"  # not a square: config.validate refuses it


@pytest.mark.parametrize("command", [
    ["mm1_jax.train", "--config=experiments/demo_cpu.py", "--workdir={tmp}", BAD],
    ["mm1_jax.eval", "--config=experiments/demo_cpu.py", "--workdir={tmp}", BAD],
    ["mm1_jax.demo", "--workdir={tmp}", BAD],
    ["mm1_jax.summary", "--config=experiments/demo_cpu.py", BAD],
], ids=lambda c: c[0])
def test_commands_print_one_line_and_exit_2(command, tmp_path):
    args = [a.format(tmp=tmp_path / "w") for a in command]
    run = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == errors.EXIT_USER_ERROR, run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.model.connector.num_tokens: ") and "99" in last, last


def test_the_family():
    for cls in (ConfigError, BatchError, RecordError, TokenizerError, EvalDataError,
                PlaceholderMismatchError, TrainingError):
        assert issubclass(cls, errors.Error), cls
    assert issubclass(ConfigError, ValueError) and issubclass(TrainingError, RuntimeError)


def test_cli_reports_errors_and_keeps_bugs(capsys):
    def mistake():
        raise ConfigError("config.train.steps: must be positive")

    with pytest.raises(SystemExit) as e:
        errors.cli(mistake)()
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: config.train.steps: must be positive\n"

    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        errors.cli(bug)()
