"""python -m mm1_jax.aot: the topology table, and the trainer's step compiled for small TPU slices
(libtpu compiles for a topology without a TPU)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import jax
import pytest

from mm1_jax.aot import TOPOLOGIES, knobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(
    __import__("importlib").util.find_spec("libtpu") is None,
    reason="needs the tpu extra (pip install -e .[tpu]): libtpu compiles for TPU topologies")


@pytest.mark.parametrize("name, topology, chips", [
    ("v5p-8", "v5:2x2x1", 4), ("v5p-256", "v5:4x4x8", 128), ("v4-32", "v4:2x2x4", 16),
    ("v5e-16", "v5e:4x4", 16), ("v6e-256", "v6e:16x16", 256)])
def test_cloud_names_count_cores_or_chips(name, topology, chips):
    """v4-N / v5p-N count TensorCores (2 per chip); v5e-N / v6e-N count chips."""
    assert TOPOLOGIES[name].topology == topology
    assert math.prod(int(n) for n in topology.split(":")[1].split("x")) == chips


@needs_libtpu
def test_topology_devices():
    from mm1_jax.aot import topology_devices

    assert len(topology_devices("v5p-256")) == 128
    devices = topology_devices("v4-8")
    assert len(devices) == 4 and devices[0].device_kind == "TPU v4"


def _small(batch: int):
    from mm1_jax.config import load_config

    cfg = load_config(os.path.join(ROOT, "experiments", "demo_cpu.py"))
    cfg.train.batch_size = batch
    cfg.mesh.shape = (1, -1, 1, 1)
    return cfg


@needs_libtpu
def test_small_config_fits_v5p_8():
    from mm1_jax.aot import compile_for, topology_devices, topology_run
    from mm1_jax.train.state import abstract_train_state

    cfg = _small(batch=8)
    devices = topology_devices("v5p-8")
    r = compile_for(cfg, devices, TOPOLOGIES["v5p-8"].hbm_bytes)
    assert r["fits"] and r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1, "expert": 1}
    assert r["attention"] == "splash"  # demo_cpu's "auto" on TPU
    assert r["bytes_per_chip"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                   + r["temp_bytes"] + r["code_bytes"])
    # Arguments per chip: one shard of every state leaf + a quarter of the batch, counted here
    # from the shardings, independently of XLA. TPU layouts pad small arrays to their tiles, so
    # XLA's figure is at least that, and well under the state held whole (replicated: 4x).
    abstract, _ = abstract_train_state(topology_run(cfg, devices))
    leaves = jax.tree.leaves(abstract)
    shard = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
    whole = sum(x.size * x.dtype.itemsize for x in leaves)
    b, s, m, hw = 8, cfg.train.seq_len, cfg.data.max_images, cfg.model.vision.image_size
    batch = (6 * 4 * s + m * hw * hw * 3 + m) * b // 4  # 6 [b, s] 32-bit arrays, ...
    assert shard + batch <= r["argument_bytes"] < 0.5 * whole
    # Donated: every state output reuses its argument's buffer.
    assert r["alias_bytes"] >= shard


@needs_libtpu
def test_cli_json_and_exit_status_when_it_does_not_fit():
    cmd = [sys.executable, "-m", "mm1_jax.aot", "--config=experiments/demo_cpu.py",
           "--topology=v5e-1", "--json", "--config.train.batch_size=4096",
           "--config.train.seq_len=4096", "--config.model.decoder.max_seq_len=4096"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 1, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["fits"] is False and out["topology"] == "v5e-1" and out["chips"] == 1
    assert out["hbm_bytes_per_chip"] == 16 * 2**30
    for key in ("bytes_per_chip", "model_flops_per_chip", "mesh", "compile_s", "attention"):
        assert key in out
    assert "--config.train.grad_accum=2" in r.stderr and "--config.mesh.shape" in r.stderr


def test_knobs_name_the_config_keys():
    text = knobs({"mesh": {"data": 1, "fsdp": 64, "tensor": 1, "expert": 1}, "grad_accum": 2,
                  "remat": "dots"})
    assert "--config.train.grad_accum=4" in text and "--config.model.remat=full" in text
    assert "(1, 64, 1, 1)" in text


def _assert_no_replicated_compute(r: dict, low: float = 0.85) -> None:
    """Compiler FLOPs per chip at most 15% above the model's share per chip (a work-sharing bug
    shows far above). Below 1: the XLA attention skips the blocks above the causal diagonal that
    the model count (6N + 12 L t d, unmasked attention) includes."""
    assert low <= r["ratio"] <= 1.15, r


@needs_libtpu
def test_flops_check_small_config_on_v5p_8():
    """`python -m mm1_jax.aot --flops` on demo_cpu: each of 4 chips computes its quarter."""
    from mm1_jax.aot import flops_check, topology_devices

    r = flops_check(_small(batch=8), topology_devices("v5p-8"))
    assert r["decoder_depth"] == 1 and r["vision_depth"] == 1 and r["chips"] == 4
    _assert_no_replicated_compute(r)


@needs_libtpu
def test_dropless_moe_runs_megablox_on_each_chip_of_v5p_8():
    """A dropless MoE decoder on v5p-8 (fsdp=4, no expert axis): "auto" picks JAX's Pallas
    megablox grouped matmul, the step holds its Mosaic kernels (forward gmm x3; backward gmm
    and tgmm x3 each) on each chip's own rows, and each chip computes its share of the FLOPs
    (the kernel runs under shard_map; its own cost estimate counts its FLOPs). With "xla"
    libtpu's ragged-dot runs every chip on all 4096 rows: 1.42x the share."""
    from mm1_jax.aot import (NO_COLLECTIVE_MATMULS, compile_train_step, model_flops_per_chip,
                             reduced_depth, topology_devices)

    cfg = _small(batch=8)
    m = cfg.model.moe
    m.num_experts, m.every, m.mode = 4, 1, "dropless"
    compiled, _, run = compile_train_step(reduced_depth(cfg), topology_devices("v5p-8"),
                                          NO_COLLECTIVE_MATMULS)
    calls = [line.split("=")[1].split()[0] for line in compiled.as_text().splitlines()
             if 'custom_call_target="tpu_custom_call"' in line and re.match(r"\s*%t?gmm", line)]
    # [rows, out] per chip: 2 rows x 256 tokens x top-2 = 1024, not the batch's 4096.
    assert sorted(calls) == ["f32[1024,128]{1,0:T(8,128)}"] * 3 + ["f32[1024,384]{1,0:T(8,128)}"] * 3 \
        + ["f32[4,128,384]{2,1,0:T(8,128)}"] * 2 + ["f32[4,384,128]{2,1,0:T(8,128)}"], calls
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    _assert_no_replicated_compute({"ratio": float(cost["flops"]) / model_flops_per_chip(run)})


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize("name", ["mm1_ablation_base", "mm1_3b_moe", "mm1_7b_moe"])
def test_no_replicated_compute_for_every_mm1_config(name):
    """MM1 configs at reduced depth on v5p-32 (16 chips, 4 rows each, the config's own mesh
    rule and image budget): compiler FLOPs per chip / (model FLOPs / chips) <= 1.15. The dense
    3B/7B/30B share the ablation's layers and layout (FSDP only); the MoEs add the expert axis.
    Compiled without libtpu's collective-matmul loops (`aot.NO_COLLECTIVE_MATMULS`): with them
    `cost_analysis()` counts each loop body once and the dense configs read ~0.72-0.75."""
    from mm1_jax.aot import flops_check, topology_devices
    from mm1_jax.config import load_config

    cfg = load_config(os.path.join(ROOT, "experiments", f"{name}.py"))
    cfg.train.batch_size = 64
    _assert_no_replicated_compute(flops_check(cfg, topology_devices("v5p-32")))
