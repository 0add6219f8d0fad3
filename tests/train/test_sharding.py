"""Sharded equals unsharded: 5 steps of demo_cpu on 8 simulated CPU devices in several meshes
against one device, and a checkpoint written on 8 devices restored on 4 and on 1."""

import json

import numpy as np
import pytest

from tests.train.conftest import run_python


def _run(case: str, compile_cache: str) -> dict:
    p = run_python(["tests/train/sharded_run.py", case], devices=8, compile_cache=compile_cache)
    return json.loads(p.stdout.strip().splitlines()[-1])


def _assert_same_losses(runs: dict) -> None:
    ref = np.array(runs.pop("1"))
    for name, losses in runs.items():
        # Step 1 sees identical parameters: only the reduction order differs.
        assert losses[0] == pytest.approx(ref[0], rel=1e-6), name
        # Later steps add Adam's amplification of last-bit differences (updates ~ lr * sign(g)).
        np.testing.assert_allclose(losses, ref, rtol=3e-5, err_msg=name)


def test_dense_meshes_and_restore_on_other_meshes(compile_cache):
    out = _run("dense", compile_cache)
    _assert_same_losses(out["runs"])  # data=8 and fsdp=4 x tensor=2 against 1 device
    r = out["restore"]
    assert r["bitwise"] == {"data2_fsdp2": True, "1": True}  # 8 -> 4 and 8 -> 1, exact
    assert r["sharding"]["data2_fsdp2"][0] == 4 and r["sharding"]["1"][0] == 1
    # ... and training continues from it: the next step's loss agrees with the 8-device run.
    for name, loss in r["loss_next"].items():
        assert loss == pytest.approx(r["loss_next"]["data8"], rel=1e-6), name


@pytest.mark.slow
def test_moe_data_by_expert_mesh(compile_cache):
    _assert_same_losses(_run("moe", compile_cache)["runs"])  # data=2 x expert=4 vs 1 device
