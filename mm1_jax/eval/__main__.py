"""`python -m mm1_jax.eval --workdir=DIR [--config=experiments/<x>.py] [--checkpoint=STEP]
[--only=NAME,...] [--config.evals.<name>.<field>=VALUE ...]`

Restores the parameters of DIR's newest complete checkpoint (or STEP) onto the config's mesh, in
the shardings training uses, and runs the evaluators of `config.evals` (all, or those named by
--only): the same ones the trainer runs. Without `--config`, the config is the one the run saved
with that checkpoint, so nothing of the training command is replayed; overrides go on top. The
checkpoint's architecture holds either way (mm1_jax/eval/restore.py). Results go to
DIR/eval.json and TensorBoard, and are printed. E.g. a quick look at 100 examples, or an
evaluator the run did not have:

    python -m mm1_jax.eval --workdir=DIR --config.evals.coco.limit=100 --config.evals.coco.shots=0,4
    python -m mm1_jax.eval --workdir=DIR --config.evals.heldout.type=perplexity \\
        --config.evals.heldout.files=held_out.jsonl

An experiment declares its evaluators with `mm1_jax.config.evaluator(...)` (README, "Evaluation");
the command line edits them as mm1_jax/cli_config.py says (`--config.evals.demo=None` removes one).
"""

from __future__ import annotations

import sys

from absl import app, flags

from mm1_jax import cli_config
from mm1_jax.errors import cli
from mm1_jax.eval.restore import evaluate_checkpoint
from mm1_jax.writer import MetricsWriter

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step to evaluate (default: newest).")
_ONLY = flags.DEFINE_list("only", [], "Names of config.evals entries to run (default: all).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    results, step = evaluate_checkpoint(flags.FLAGS.config, _WORKDIR.value,
                                        step=_CHECKPOINT.value, only=_ONLY.value)
    writer = MetricsWriter(_WORKDIR.value)
    path = writer.write_eval(step, results)
    writer.close()
    width = max(map(len, results))
    for name, value in sorted(results.items()):
        print(f"{name.ljust(width)}  {value:.4f}")
    print(f"step {step}; written to {path}", file=sys.stderr)


if __name__ == "__main__":
    app.run(cli(main), flags_parser=cli(cli_config.parse))
