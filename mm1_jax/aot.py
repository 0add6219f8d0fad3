"""Ahead-of-time compile of the trainer's own step for a Cloud TPU topology, from any machine.

    python -m mm1_jax.aot --config=experiments/mm1_3b_moe.py --topology=v5p-256 [--json] \
        [--config.key=value ...]

Needs the `tpu` extra (libtpu installs and compiles without TPU hardware; no chip is touched).
Builds the abstract train state and a global batch with the shardings the trainer uses, compiles
`loop.compile_step` (the very function `python -m mm1_jax.train` runs) for the topology's chips,
and prints per-chip memory against the chip's HBM, our analytical model FLOPs per chip
(`mm1_jax/models/stats.py`, computed at start-up; every image slot the step encodes counted as a
real image) and the compile time. Exit status 1 when it does not fit, with the
config keys that would help; `--json` prints one object instead of the table.

    python -m mm1_jax.aot --config=experiments/mm1_7b.py --topology=v5p-256 --flops

`--flops` checks instead that no chip computes more than its share: XLA's `cost_analysis()`
counts a scanned layer stack's body once, not once per layer, so the step is compiled at reduced
depth (one decoder period, one ViT block: the scans run once and are counted exactly) without
remat, and the compiler's FLOPs per chip are divided by the model FLOPs per chip (stats of the
same reduced model / chips). Replicated work (a layer that loses its batch split) shows as a ratio
well above 1; what remains above 1 is the optimiser, the loss, norms and, for capacity-routed
MoE, the empty expert slots (`capacity_factor`). libtpu also turns large FSDP matmuls into
collective matmuls ("windowed einsums": the all-gather or reduce-scatter in a loop over the
shards, one matmul slice per iteration), whose loop bodies `cost_analysis()` counts once too;
the check compiles with them off (`NO_COLLECTIVE_MATMULS`), which changes how a matmul
overlaps its collective but not what each chip computes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
from absl import app, flags
from jax.experimental import topologies
from ml_collections import config_flags

from mm1_jax import sharding
from mm1_jax.config import MESH_AXES, ConfigError, moe_period
from mm1_jax.data.batch import batch_spec
from mm1_jax.data.synthetic import SPECIAL
from mm1_jax.errors import cli
from mm1_jax.startup import Run, start
from mm1_jax.train.loop import compile_step
from mm1_jax.train.metrics import encoded_images, model_flops_per_step
from mm1_jax.train.state import abstract_train_state

GiB = 2**30

# libtpu flags that turn off its collective-matmul loops (module doc): for the FLOPs check and
# the layout tests, which compare programs whose matmuls must not differ in how they overlap.
NO_COLLECTIVE_MATMULS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                         "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}

# Compiling for a topology opens no TPU, so it need not hold libtpu's one-process-per-host lock
# (/tmp/libtpu_lockfile): several compiles, and other JAX processes, may share the machine. The
# entry points that compile for topologies (`main` here, the tests, benchmarks/layout_memory.py)
# set this before JAX first loads libtpu; importing this module changes nothing.
SHARE_LIBTPU = ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@dataclasses.dataclass(frozen=True)
class Tpu:
    """One Cloud TPU slice: its topology as libtpu names it and one chip's HBM."""

    topology: str  # "<generation>:<chips per dimension>", e.g. "v5:4x4x8"
    chip_config: str  # "megacore": one JAX device per chip (v4, v5p); "default" (v5e, v6e)
    hbm_bytes: int  # per chip; as XLA's out-of-memory message reports it where we have seen it


def _slices(prefix: str, gen: str, shapes: dict[int, str], cores_per_chip: int, config: str,
            hbm: int) -> dict[str, Tpu]:
    return {f"{prefix}-{chips * cores_per_chip}": Tpu(f"{gen}:{shape}", config, hbm)
            for chips, shape in shapes.items()}


_CUBES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
          256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}
_SQUARES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
            256: "16x16"}

# The one table: Cloud TPU names -> topologies. v4-N and v5p-N count TensorCores (2 per chip,
# so v5p-256 is 128 chips); v5e-N and v6e-N count chips.
TOPOLOGIES: dict[str, Tpu] = {
    **_slices("v4", "v4", _CUBES, 2, "megacore", 32 * GiB),
    # 95.74 GiB: the HBM libtpu reports for a v5p chip (data sheet: 95 GB).
    **_slices("v5p", "v5", _CUBES, 2, "megacore", int(95.74 * GiB)),
    **_slices("v5e", "v5e", _SQUARES, 1, "default", 16 * GiB),
    **_slices("v6e", "v6e", _SQUARES, 1, "default", 32 * GiB),
}


def topology_devices(name: str) -> list:
    """The compile-only devices of the Cloud TPU slice `name` (needs libtpu, not a TPU)."""
    if name not in TOPOLOGIES:
        raise ConfigError(f"--topology={name!r}: unknown; known: {', '.join(TOPOLOGIES)}")
    tpu = TOPOLOGIES[name]
    bounds = (1, 1, 1) if tpu.topology.endswith(":1x1") else (2, 2, 1)
    return list(topologies.get_topology_desc(
        platform="tpu", topology_name=tpu.topology, chip_config_name=tpu.chip_config,
        chips_per_host_bounds=bounds, num_slices=1).devices)


def topology_run(cfg: ml_collections.ConfigDict, devices: list) -> Run:
    """The trainer's start-up for `devices` (the mesh ordered for the physical topology). No
    corpus, tokenizer or evaluation file is read, so the check runs anywhere: the compiled step
    depends on none of them (a copy of the config goes without their paths)."""
    cfg = cfg.copy_and_resolve_references()
    cfg.data.tokenizer, cfg.evals = None, {}
    return start(cfg, devices=devices, special=SPECIAL, corpus=False)


def compile_train_step(cfg: ml_collections.ConfigDict, devices: list,
                       compiler_options: dict[str, Any] | None = None):
    """(compiled, seconds, run): the trainer's `loop.compile_step` of `cfg` for `devices`."""
    run = topology_run(cfg, devices)
    abstract, shardings = abstract_train_state(run)
    compiled, seconds = compile_step(abstract, shardings, run.mesh, batch_spec(run.cfg),
                                     compiler_options)
    return compiled, seconds, run


def model_flops_per_chip(run: Run) -> float:
    """Model FLOPs per chip of one step with every image slot the step encodes holding a real
    image: what the compiled program computes (every slot, or the image budget's)."""
    images = encoded_images(run.cfg, sharding.data_parallel_size(run.mesh))
    return model_flops_per_step(run.cfg, run.model.stats, images) / run.mesh.size


def compile_for(cfg: ml_collections.ConfigDict, devices: list, hbm_bytes: int) -> dict[str, Any]:
    """Compiles the train step of `cfg` for `devices`; the report as a dict (see module doc)."""
    run = topology_run(cfg, devices)
    cfg = run.cfg
    report = {"config": cfg.name, "chips": len(devices), "device_kind": devices[0].device_kind,
              "mesh": dict(run.mesh.shape), "remat": cfg.model.remat,
              "attention": run.kernels.attention,
              "grad_accum": cfg.train.grad_accum, "batch": cfg.train.batch_size,
              "seq_len": cfg.train.seq_len, "max_images": cfg.data.max_images,
              "hbm_bytes_per_chip": hbm_bytes,
              "image_budget": cfg.model.image_budget,
              "model_flops_per_chip": model_flops_per_chip(run)}
    abstract, shardings = abstract_train_state(run)
    t = time.perf_counter()
    try:
        compiled, seconds = compile_step(abstract, shardings, run.mesh, batch_spec(cfg))
    except jax.errors.JaxRuntimeError as e:  # XLA refuses programs that exceed HBM
        if not str(e).startswith("RESOURCE_EXHAUSTED"):
            raise
        return {**report, "fits": False, "error": str(e).splitlines()[0],
                "compile_s": time.perf_counter() - t, "bytes_per_chip": None}
    mem = compiled.memory_analysis()
    parts = {"argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
             "temp_bytes": mem.temp_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
             "code_bytes": mem.generated_code_size_in_bytes}
    # Donated state: outputs alias the arguments' buffers and are not counted twice.
    total = (parts["argument_bytes"] + parts["output_bytes"] - parts["alias_bytes"]
             + parts["temp_bytes"] + parts["code_bytes"])
    return {**report, **parts, "bytes_per_chip": total, "fits": total <= hbm_bytes,
            "compile_s": seconds}


def reduced_depth(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`cfg` with one decoder period and one ViT block, no remat and XLA attention: every scan
    runs once and no kernel is opaque (`cost_analysis()` counts nothing inside the splash
    kernel's custom call), so the compiler's FLOP count is exact (see module doc). One
    micro-batch (`grad_accum` 1: the micro-batch loop is a scan too), and the fused head loss in
    one chunk (its chunks are a scan). Widths, batch and mesh are unchanged."""
    cfg = cfg.copy_and_resolve_references()
    cfg.model.decoder.depth = moe_period(cfg.model.moe)
    cfg.model.vision.depth, cfg.model.vision.feature_layer = 1, -1
    cfg.model.remat, cfg.model.attention = "none", "xla"
    cfg.train.grad_accum, cfg.model.loss_chunks = 1, min(cfg.model.loss_chunks, 1)
    return cfg


def flops_check(cfg: ml_collections.ConfigDict, devices: list) -> dict[str, Any]:
    """Compiler FLOPs per chip against model FLOPs per chip for `reduced_depth(cfg)`, compiled
    without collective-matmul loops on TPU (module doc)."""
    cfg = reduced_depth(cfg)
    options = NO_COLLECTIVE_MATMULS if devices[0].platform == "tpu" else None
    compiled, seconds, run = compile_train_step(cfg, devices, options)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    model = model_flops_per_chip(run)
    return {"config": cfg.name, "chips": len(devices), "mesh": dict(run.mesh.shape),
            "decoder_depth": cfg.model.decoder.depth, "vision_depth": cfg.model.vision.depth,
            "compiler_flops_per_chip": float(cost["flops"]), "model_flops_per_chip": model,
            "ratio": float(cost["flops"]) / model, "compile_s": seconds}


def knobs(report: dict[str, Any]) -> str:
    """What to change when the program does not fit."""
    mesh, accum = report["mesh"], report["grad_accum"]
    tips = [f"shard the state further: --config.mesh.shape (now {tuple(mesh.values())} over "
            f"{MESH_AXES}; FSDP = the fsdp axis, MoE experts over the expert axis)",
            f"split the batch into micro-batches: --config.train.grad_accum={2 * accum} "
            f"(now {accum}; batch_size must divide by data parallelism x grad_accum)"]
    if report["remat"] != "full":
        tips.append(f"recompute activations: --config.model.remat=full (now {report['remat']})")
    tips.append("or a topology with more chips (--topology)")
    return "\n".join(f"  - {t}" for t in tips)


def format_report(r: dict[str, Any], topology: str) -> str:
    gb = lambda n: f"{n / 1e9:8.2f} GB" if n >= 1e8 else f"{n / 1e6:8.2f} MB"  # noqa: E731
    mesh = " x ".join(f"{a}={n}" for a, n in r["mesh"].items() if n > 1) or "1 device"
    lines = [f"{r['config']} on {topology} ({r['chips']} x {r['device_kind']}), mesh {mesh}, "
             f"remat {r['remat']}, attention {r['attention']}, grad_accum {r['grad_accum']}, "
             f"batch {r['batch']} x {r['seq_len']} with {r['max_images']} image slots"
             + (f" (image_budget {r['image_budget']})" if r["image_budget"] else "")]
    if r["bytes_per_chip"] is None:
        lines.append(f"  does not fit: {r['error']}")
    else:
        lines += [f"  per chip: arguments {gb(r['argument_bytes'])}",
                  f"            outputs   {gb(r['output_bytes'])}",
                  f"            aliased   {gb(r['alias_bytes'])}",
                  f"            temps     {gb(r['temp_bytes'])}",
                  f"            total     {gb(r['bytes_per_chip'])} of {gb(r['hbm_bytes_per_chip'])}"
                  f" HBM ({'fits' if r['fits'] else 'does NOT fit'})",
                  f"  compile   {r['compile_s']:.1f} s"]
    lines.append(f"  model FLOPs per chip per step: {r['model_flops_per_chip'] / 1e12:.4g} TFLOP")
    return "\n".join(lines)


def main(argv):
    del argv
    os.environ.setdefault(*SHARE_LIBTPU)
    name, cfg = flags.FLAGS.topology, flags.FLAGS.config
    t = time.perf_counter()
    if flags.FLAGS.flops:
        r = {"topology": name, **flops_check(cfg, topology_devices(name))}
        print(json.dumps(r) if flags.FLAGS.json else
              f"{r['config']} on {name} at decoder depth {r['decoder_depth']}, ViT depth "
              f"{r['vision_depth']}, no remat: compiler {r['compiler_flops_per_chip'] / 1e12:.4g} "
              f"TFLOP per chip / model {r['model_flops_per_chip'] / 1e12:.4g} = {r['ratio']:.3f}")
        return
    report = compile_for(cfg, topology_devices(name), TOPOLOGIES[name].hbm_bytes)
    report = {"topology": name, **report, "wall_s": time.perf_counter() - t}
    print(json.dumps(report) if flags.FLAGS.json else format_report(report, name))
    if not report["fits"]:
        print(f"{cfg.name} does not fit {name}; what would help:\n{knobs(report)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # Flags are defined here, not at import, so programs with their own --config can import this.
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("topology", None, f"Cloud TPU slice: {', '.join(TOPOLOGIES)}.")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    flags.DEFINE_bool("flops", False, "Check compiler FLOPs per chip against model FLOPs at "
                      "reduced depth instead of memory (module doc).")
    flags.mark_flags_as_required(["config", "topology"])
    app.run(cli(main))
