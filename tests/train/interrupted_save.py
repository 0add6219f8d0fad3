"""Subprocess of test_resume.py: completes a checkpoint at step 1, starts an asynchronous save of
a larger state at step 2, and SIGKILLs itself while that save is being written."""

import dataclasses
import os
import signal
import sys

import jax.numpy as jnp

from mm1_jax.config import base_config
from mm1_jax.checkpoint import Checkpointer


@dataclasses.dataclass
class FakeState:
    params: dict

    def arrays(self):
        return {"params": self.params}


def main(directory: str) -> None:
    cfg = base_config()
    cfg.checkpoint.every, cfg.checkpoint.keep = 1, 5
    ckpt = Checkpointer(directory, cfg)
    ckpt.save(1, FakeState({"w": jnp.full((1000,), 1.0)}), None)
    ckpt.manager.wait_until_finished()
    big = {f"w{i}": jnp.arange(4_000_000, dtype=jnp.float32) * i for i in range(16)}  # 256 MB
    ckpt.save(2, FakeState(big), None)  # returns while the files are still being written
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1])
