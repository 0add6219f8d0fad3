"""Subprocess of test_multihost.py: ONE process trains on the global batch that two processes
see together (rows of data shard 0 of 2, then rows of shard 1 of 2), on 2 simulated devices."""

import sys

import jax
import numpy as np
from absl import flags

from mm1_jax.config import load_config
from mm1_jax.data.pipeline import make_iterator
from mm1_jax.train.loop import train


class BothShards:
    def __init__(self, cfg):
        self.parts = [make_iterator(cfg, shard_index=i, shard_count=2) for i in range(2)]

    def __iter__(self):
        return self

    def __next__(self):
        a, b = (next(p) for p in self.parts)
        return jax.tree.map(lambda x, y: np.concatenate([x, y]), a, b)


def main(argv):
    workdir, data, steps = argv[1], argv[2], int(argv[3])
    cfg = load_config("experiments/demo_cpu.py")
    cfg.data.dir, cfg.data.tokenizer = data, f"{data}/tokenizer.model"
    cfg.train.steps, cfg.train.log_every, cfg.mesh.shape = steps, 1, (2, 1, 1, 1)
    cfg.evals.demo.limit = 16  # as the two-process run (test_multihost.py)
    train(cfg, workdir, iterator=BothShards(cfg))


if __name__ == "__main__":
    flags.FLAGS(sys.argv[:1])
    main(sys.argv)
