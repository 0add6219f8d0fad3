"""`python -m mm1_jax.train --config=experiments/<x>.py --workdir=DIR [--config.key=value ...]`

Resumes from the newest complete checkpoint in DIR/checkpoints. Without `--config`, the run
continues with the config it saved there, overrides on top (`--config.train.steps=...`):

    python -m mm1_jax.train --workdir=DIR [--config.key=value ...]

Evaluators are added, replaced or removed on the command line (`--config.evals.demo=None`,
`--config.evals.NAME.type=TYPE --config.evals.NAME.FIELD=...`; mm1_jax/cli_config.py). On a
multi-host pod pass `--distributed` (JAX finds the coordinator on TPU / SLURM / Kubernetes) or
the explicit `--coordinator_address`, `--num_processes`, `--process_id`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from mm1_jax import cli_config
from mm1_jax.errors import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default workdir/<config.name>).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
    del argv
    import jax

    cfg = flags.FLAGS.config  # defined by cli_config.parse: an experiment, or the saved config
    if _DISTRIBUTED.value or _COORDINATOR.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only clusters
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)

    from mm1_jax.train.loop import quiet_library_logs, train

    quiet_library_logs()

    workdir = _WORKDIR.value or os.path.join("workdir", cfg.name)
    logging.info("config %s, workdir %s", cfg.name, workdir)
    result = train(cfg, workdir)
    print(f"{'stopped (pre-empted)' if result.preempted else 'finished'} at step {result.step}; "
          f"checkpoints in {os.path.join(workdir, 'checkpoints')}", file=sys.stderr)
    if result.eval_metrics:
        print(f"\nevaluation at step {result.step} ({os.path.join(workdir, 'eval.json')}):")
        width = max(map(len, result.eval_metrics))
        for name, value in sorted(result.eval_metrics.items()):
            print(f"  {name.ljust(width)}  {value:.4f}")


if __name__ == "__main__":
    app.run(cli(main), flags_parser=cli(cli_config.parse))
