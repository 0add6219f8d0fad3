"""Run in a subprocess with 8 simulated CPU devices (tests/train/test_sharding.py):
5 steps of demo_cpu on several meshes, a checkpoint written on 8 devices restored on 4 and 1.
Prints one JSON line: {"runs": {mesh: [losses]}, "restore": {...}}."""

import json
import sys
import tempfile

import jax
import numpy as np

from mm1_jax.config import load_config
from mm1_jax.checkpoint import Checkpointer
from mm1_jax.startup import start
from mm1_jax.train.loop import compile_step, global_batch
from mm1_jax.train.state import abstract_train_state, init_train_state
from mm1_jax.data.synthetic import SPECIAL, make_global_batch

STEPS = 5


def make_cfg(case: str):
    cfg = load_config("experiments/demo_cpu.py")
    cfg.evals, cfg.data.tokenizer = {}, None  # synthetic batches: no demo corpus, no tokenizer
    if case == "moe":  # the demo decoder with its 2nd FFN replaced by 4 top-2 experts
        cfg.model.moe.num_experts, cfg.model.moe.every = 4, 2
    return cfg


class Run:
    def __init__(self, cfg, shape, devices):
        cfg.mesh.shape = shape
        self.run = start(cfg, devices=devices, special=SPECIAL, corpus=False)
        self.mesh = self.run.mesh
        self.abstract, self.shardings = abstract_train_state(self.run)
        self.cfg, self.step_fn = cfg, None

    def init(self):
        return init_train_state(self.run, self.abstract, self.shardings)

    def step(self, state, batch):
        batch = global_batch(batch, self.mesh)
        if self.step_fn is None:
            self.step_fn, _ = compile_step(self.abstract, self.shardings, self.mesh, batch)
        state, metrics = self.step_fn(state, batch)
        return state, float(metrics["loss/total"])


def main(case: str):
    devices = jax.devices()
    assert len(devices) == 8, devices
    batches = [make_global_batch(make_cfg(case), 0, i) for i in range(STEPS + 1)]
    meshes = {"dense": {"1": (1, 1, 1, 1), "data8": (8, 1, 1, 1), "fsdp4_tensor2": (1, 4, 2, 1)},
              "moe": {"1": (1, 1, 1, 1), "data2_expert4": (2, 1, 1, 4)}}[case]
    out = {"runs": {}}
    runs = {}
    for name, shape in meshes.items():
        run = runs[name] = Run(make_cfg(case), shape, devices[:1] if name == "1" else devices)
        state, losses = run.init(), []
        for i in range(STEPS):
            state, loss = run.step(state, batches[i])
            losses.append(loss)
        if name == "data8":
            with tempfile.TemporaryDirectory() as d:
                out["restore"] = restore_elsewhere(run, state, runs["1"], batches[STEPS], d)
        out["runs"][name] = losses
    print(json.dumps(out))


def restore_elsewhere(run8, state8, run1, next_batch, directory):
    """Saves the 8-device state, restores it on 4 devices and on 1 and compares; one more step
    on 1 device (reusing that run's compiled step) against the 8-device run's."""
    saved = jax.device_get(state8.arrays())
    ckpt = Checkpointer(directory, run8.cfg)
    ckpt.save(STEPS, state8, None, force=True)
    ckpt.close()
    _, loss8 = run8.step(state8, next_batch)
    result = {"loss_next": {"data8": loss8}, "bitwise": {}, "sharding": {}}
    for name, run in (("data2_fsdp2", Run(make_cfg("dense"), (2, 2, 1, 1), jax.devices()[:4])),
                      ("1", run1)):
        restored = Checkpointer(directory, run.cfg).restore(run.abstract, None)
        result["bitwise"][name] = all(jax.tree.leaves(jax.tree.map(
            np.array_equal, saved, jax.device_get(restored.arrays()))))
        kernel = restored.params["decoder"]["periods"]["blocks"][0]["ffn"]["up"]["kernel"]
        result["sharding"][name] = [len(kernel.sharding.device_set), str(kernel.sharding.spec)]
        if run is run1:
            _, result["loss_next"][name] = run.step(restored, next_batch)
    return result


if __name__ == "__main__":
    main(sys.argv[1])
