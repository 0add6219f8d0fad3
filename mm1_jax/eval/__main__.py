"""`python -m mm1_jax.eval --config=experiments/<x>.py --workdir=DIR [--checkpoint=STEP]
[--only=NAME,...] [--config.evals.<name>.<field>=VALUE ...]`

Restores the parameters of DIR's newest complete checkpoint (or STEP) onto the config's mesh, in
the shardings training uses, and runs the evaluators of `config.evals` (all, or those named by
--only): the same ones the trainer runs. Results go to DIR/eval.json and TensorBoard, and are
printed. Settings of an evaluator are config overrides, e.g. a quick look at 100 examples:

    python -m mm1_jax.eval --config=experiments/my_run.py --workdir=DIR \\
        --config.evals.coco.limit=100 --config.evals.coco.shots=0,4

An experiment declares its evaluators with `mm1_jax.config.evaluator(...)` (README, "Evaluation").
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from mm1_jax.errors import cli
from mm1_jax.eval.restore import evaluate_checkpoint
from mm1_jax.writer import MetricsWriter

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step to evaluate (default: newest).")
_ONLY = flags.DEFINE_list("only", [], "Names of config.evals entries to run (default: all).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    results, step = evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, step=_CHECKPOINT.value,
                                        only=_ONLY.value)
    writer = MetricsWriter(_WORKDIR.value)
    path = writer.write_eval(step, results)
    writer.close()
    width = max(map(len, results))
    for name, value in sorted(results.items()):
        print(f"{name.ljust(width)}  {value:.4f}")
    print(f"step {step}; written to {path}", file=sys.stderr)


if __name__ == "__main__":
    app.run(cli(main))
