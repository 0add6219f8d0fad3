"""The demo's entry point: `python -m mm1_jax.demo [--workdir=DIR] [--config.key=value ...]`.

Builds the embedded demo corpus at `data.dir` when it is absent (scikit-learn's digits and
Python's own documentation; nothing is downloaded: mm1_jax.data.demo), trains
experiments/demo_cpu.py on it and prints the held-out table. `bash launch/demo.sh` runs this.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from mm1_jax.errors import cli

# experiments/ sits beside the package in a checkout (the demo runs from one).
DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments", "demo_cpu.py")


def main(argv):
    del argv
    from mm1_jax.data.demo import ensure_demo_data
    from mm1_jax.eval.demo import format_table
    from mm1_jax.train.loop import quiet_library_logs, train

    quiet_library_logs()

    cfg = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or os.path.join("workdir", cfg.name)
    ensure_demo_data(cfg.data.dir)
    result = train(cfg, workdir)
    print(f"{'stopped (pre-empted)' if result.preempted else 'finished'} at step {result.step}; "
          f"checkpoints in {os.path.join(workdir, 'checkpoints')}", file=sys.stderr)
    if "demo/caption_acc_0shot" in result.eval_metrics:
        print(f"\nheld-out evaluation at step {result.step} ({os.path.join(workdir, 'eval.json')}):")
        print(format_table(result.eval_metrics))


if __name__ == "__main__":
    # Flags are defined here, not at import, so programs with their own flags can import this.
    config_flags.DEFINE_config_file("config", DEMO_CONFIG, "The demo's config.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (default workdir/<config.name>).")
    app.run(cli(main))
