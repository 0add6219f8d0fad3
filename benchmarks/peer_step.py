"""Our train step against Hugging Face `transformers` at equal dimensions, in one run.

    python benchmarks/peer_step.py [--cases dense,moe,clip] [--runs 6] [--block 3] [--threads N]

Cases (float32 on both sides, AdamW with the same betas, eps, weight decay and clipping):
- dense: Llama-style decoder, d512, 8 layers, 8 heads, SwiGLU 1408, vocab 32,000, 8 x 512 tokens;
  ours is the trainer's own compiled step (`loop.compile_step`: forward, backward, AdamW,
  metrics) on a text-only batch, theirs `LlamaForCausalLM` (eager, SDPA attention).
- moe: the same with 8 experts of hidden 704, top-2, in every layer; ours on the configured
  training path (`--moe_mode`, default capacity 1.25, index dispatch), theirs
  `MixtralForCausalLM` with its router aux loss on (coefficient 0.01, like ours).
- clip: a CLIP ViT tower (ViT-S/16 at 224, 6 layers, QuickGELU), 16 images, loss = mean square
  of the last hidden states; ours `VisionEncoder`, theirs `CLIPVisionModel`.

Each side runs in its own worker process (this script with --worker), and the parent has them
take turns of `--block` steps each, so machine load hits both alike while neither shares a heap
or thread pool with the other; the figures are medians of every timed step. A turn of one step
each (`--block 1`) costs our side more than machine load: the first step after the torch worker
has run spends 5-9 s of kernel time re-faulting the ~4 GB of temporaries XLA:CPU allocates
afresh each step (against 0.2-0.3 s after a step of its own; /proc/<pid>/stat, 2026-11-22),
which a training run, alone on its machine, never pays; BENCHMARKS.md gives both figures.
With `--jemalloc /usr/lib/x86_64-linux-gnu/libjemalloc.so.2` (Debian's libjemalloc2) our worker
runs on jemalloc told to keep its pages (JEMALLOC_CONF), reuses the temporaries, and spends no
kernel time on them even in turns of one step (README, "CPU runs"). (In one process, our MoE step measured
10.4 s after torch steps against 7.4 s alone: the two frameworks' allocators and thread pools
interfere.) Workers set OMP_WAIT_POLICY=PASSIVE, so an idle torch worker does not spin.
Our worker runs with glibc.malloc.hugetlb=1, as launch/setup_env.sh sets for every mm1_jax
command: XLA:CPU allocates a step's temporaries afresh and 4 KiB pages fault in again each step.
Theirs runs without it by default: the same tunable made the torch step slower here (9.2-9.6 s
against 7.8-8.1 s, dense, 2026-11-22); `--hugetlb ours,theirs` or `--hugetlb ''` to compare. Model FLOPs per step use one formula for both sides:
6 x (matmul parameters) + 12 x layers x seq x width per token (attention, unmasked count), for
the ViT the same per patch token. Each side's FLOP/s is divided by its own framework's 2048^3
float32 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see the module docstring; before torch
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import header  # noqa: E402
from mm1_jax.config import base_config  # noqa: E402
from mm1_jax.data.batch import Batch  # noqa: E402
from mm1_jax.data.kinds import KIND_IDS  # noqa: E402
from mm1_jax.perf import measure_matmul_flops  # noqa: E402
from mm1_jax.startup import start  # noqa: E402
from mm1_jax.train.loop import compile_step, global_batch  # noqa: E402
from mm1_jax.train.state import abstract_train_state, init_train_state  # noqa: E402
from mm1_jax.data.synthetic import SPECIAL  # noqa: E402

LM = dict(vocab=32_000, width=512, depth=8, heads=8, mlp=1408, batch=8, seq=512)
MOE = dict(experts=8, expert_mlp=704, top_k=2)
VIT = dict(image=224, patch=16, width=384, depth=6, heads=6, mlp=1536, batch=16)
LR, WD, B1, B2, EPS, CLIP_NORM = 1e-4, 0.1, 0.9, 0.95, 1e-8, 1.0


def lm_flops_per_step(moe: bool) -> float:
    d, f, L, V = LM["width"], LM["mlp"], LM["depth"], LM["vocab"]
    ffn = MOE["top_k"] * 3 * d * MOE["expert_mlp"] + d * MOE["experts"] if moe else 3 * d * f
    matmul = L * (4 * d * d + ffn) + V * d  # + the LM head; the embedding is a gather
    per_token = 6 * matmul + 12 * L * LM["seq"] * d
    return per_token * LM["batch"] * LM["seq"]


def vit_flops_per_step() -> float:
    d, L = VIT["width"], VIT["depth"]
    tokens = (VIT["image"] // VIT["patch"]) ** 2 + 1
    matmul = L * (4 * d * d + 2 * d * VIT["mlp"]) + 3 * VIT["patch"] ** 2 * d
    return (6 * matmul + 12 * L * tokens * d) * tokens * VIT["batch"]


def text_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """One packed-free text batch: every row a single document of `seq` tokens."""
    b, s = LM["batch"], LM["seq"]
    rng = np.random.default_rng(seed)
    tokens = rng.integers(8, LM["vocab"], (b, s + 1)).astype(np.int32)
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_mask": np.ones((b, s), np.float32),
            "segment_ids": np.ones((b, s), np.int32),
            "positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()}


# ---------------------------------------------------------------------------- ours


def ours_lm(moe: bool, moe_mode: str):
    cfg = base_config()
    cfg.model.dtype, cfg.model.remat = "float32", "none"
    d = cfg.model.decoder
    d.vocab_size, d.width, d.depth, d.heads, d.kv_heads = (
        LM["vocab"], LM["width"], LM["depth"], LM["heads"], LM["heads"])
    d.head_dim, d.mlp_dim, d.max_seq_len = LM["width"] // LM["heads"], LM["mlp"], LM["seq"]
    if moe:
        m = cfg.model.moe
        m.num_experts, m.every, m.top_k = MOE["experts"], 1, MOE["top_k"]
        m.expert_mlp_dim, m.mode = MOE["expert_mlp"], moe_mode
    # Text only: no image slots, so the (smallest valid) image tower never runs; its few
    # parameters still go through AdamW.
    v = cfg.model.vision
    v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim = 28, 14, 32, 1, 1, 32
    cfg.model.connector.kind, cfg.model.connector.num_tokens = "avg_pool", 1
    cfg.data.max_images, cfg.data.tokenizer, cfg.evals = 0, None, {}
    cfg.train.batch_size, cfg.train.seq_len, cfg.train.steps = LM["batch"], LM["seq"], 1000
    o = cfg.optim
    o.lr, o.warmup_steps, o.b1, o.b2, o.eps, o.clip_norm = LR, 0, B1, B2, EPS, CLIP_NORM
    o.weight_decay_ratio = WD / LR
    run = start(cfg, special=SPECIAL, corpus=False)
    abstract, shardings = abstract_train_state(run)
    state = init_train_state(run, abstract, shardings)
    b, none = LM["batch"], np.zeros((LM["batch"],), np.int32)
    host = Batch(**text_batch(), kinds=np.full((b, LM["seq"]), KIND_IDS["text"], np.int32),
                 images=np.zeros((b, 0, 28, 28, 3), np.uint8), image_mask=np.zeros((b, 0), bool),
                 truncated=none, dropped=none)
    batch = global_batch(host, run.mesh)
    step, _ = compile_step(abstract, shardings, run.mesh, batch)
    box = [state]

    def once():
        box[0], metrics = step(box[0], batch)
        jax.block_until_ready(metrics)
    return once


def ours_vit():
    from mm1_jax.models.vision import VisionEncoder

    v = base_config().model.vision
    v.image_size, v.patch_size, v.width, v.depth = VIT["image"], VIT["patch"], VIT["width"], VIT["depth"]
    v.heads, v.mlp_dim = VIT["heads"], VIT["mlp"]
    model = VisionEncoder(v, dtype=jnp.float32, param_dtype=jnp.float32, remat="none",
                          rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.chain(optax.clip_by_global_norm(CLIP_NORM),
                     optax.adamw(LR, B1, B2, EPS, weight_decay=WD))
    opt = tx.init(params)
    images = jnp.asarray(np.random.default_rng(0).integers(
        0, 256, (VIT["batch"], VIT["image"], VIT["image"], 3), np.uint8))

    @jax.jit
    def step(params, opt, images):
        def loss(p):
            return jnp.mean(jnp.square(nnx.merge(graphdef, p)(images)))
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    box = [params, opt]

    def once():
        box[0], box[1], value = step(box[0], box[1], images)
        jax.block_until_ready(value)
    return once


# ---------------------------------------------------------------------------- theirs


def theirs_lm(moe: bool):
    import torch
    import transformers

    common = dict(vocab_size=LM["vocab"], hidden_size=LM["width"], num_hidden_layers=LM["depth"],
                  num_attention_heads=LM["heads"], num_key_value_heads=LM["heads"],
                  max_position_embeddings=LM["seq"], tie_word_embeddings=False)
    if moe:
        config = transformers.MixtralConfig(
            intermediate_size=MOE["expert_mlp"], num_local_experts=MOE["experts"],
            num_experts_per_tok=MOE["top_k"], output_router_logits=True,
            router_aux_loss_coef=0.01, **common)
        model = transformers.MixtralForCausalLM(config)
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            intermediate_size=LM["mlp"], **common))
    model.config._attn_implementation = "sdpa"
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    b = text_batch()
    ids, labels = torch.from_numpy(b["tokens"]).long(), torch.from_numpy(b["targets"]).long()

    def once():
        # shift_labels: our targets are already the next tokens, as in the trainer's batches.
        out = model(input_ids=ids, labels=labels, shift_labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return once


def theirs_vit():
    import torch
    import transformers

    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        image_size=VIT["image"], patch_size=VIT["patch"], hidden_size=VIT["width"],
        num_hidden_layers=VIT["depth"], num_attention_heads=VIT["heads"],
        intermediate_size=VIT["mlp"], hidden_act="quick_gelu"))
    model.config._attn_implementation = "sdpa"
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    pixels = torch.randn(VIT["batch"], 3, VIT["image"], VIT["image"])

    def once():
        loss = model(pixel_values=pixels).last_hidden_state.square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return once


def torch_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a = torch.ones(n, n)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


CASES = {
    "dense": (lambda a: ours_lm(False, a.moe_mode), lambda a: theirs_lm(False),
              lambda: lm_flops_per_step(False), "LlamaForCausalLM", LM["batch"] * LM["seq"], "tokens"),
    "moe": (lambda a: ours_lm(True, a.moe_mode), lambda a: theirs_lm(True),
            lambda: lm_flops_per_step(True), "MixtralForCausalLM", LM["batch"] * LM["seq"], "tokens"),
    "clip": (lambda a: ours_vit(), lambda a: theirs_vit(), vit_flops_per_step,
             "CLIPVisionModel", VIT["batch"], "images"),
}


def worker(case: str, side: str, args) -> None:
    """Builds one side of `case`, then takes a step per line on stdin and prints its seconds."""
    if side == "theirs":
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
    make_ours, make_theirs = CASES[case][:2]
    step = (make_ours if side == "ours" else make_theirs)(args)
    print("ready", flush=True)
    for _ in sys.stdin:
        print(f"{timed(step):.6f}", flush=True)


# jemalloc keeping every page it has mapped: the step's temporaries are reused, never re-faulted.
JEMALLOC_CONF = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def hugetlb_tunables(on: bool) -> str:
    """GLIBC_TUNABLES for a worker: the caller's, with malloc's transparent huge pages on or off."""
    keep = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
            if t and not t.startswith("glibc.malloc.hugetlb")]
    return ":".join(keep + [f"glibc.malloc.hugetlb={int(on)}"])


class Worker:
    def __init__(self, case: str, side: str, args):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--cases", case,
               "--moe_mode", args.moe_mode, "--threads", str(args.threads)]
        env = dict(os.environ, GLIBC_TUNABLES=hugetlb_tunables(side in args.hugetlb.split(",")))
        if args.jemalloc and side in args.jemalloc_sides.split(","):
            env.update(LD_PRELOAD=args.jemalloc, MALLOC_CONF=JEMALLOC_CONF)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self._read()  # "ready": built and compiled

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[3:6]} exited with {self.proc.wait()}")
        return line.strip()

    def step(self) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="dense,moe,clip")
    p.add_argument("--runs", type=int, default=6, help="timed steps per side")
    p.add_argument("--block", type=int, default=3,
                   help="steps a side takes in a row before the other's turn (module docstring)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--moe_mode", default="capacity", choices=("capacity", "dropless"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--hugetlb", default="ours",
                   help="sides (ours,theirs) whose worker runs with glibc.malloc.hugetlb=1; "
                        "'' for neither (module docstring)")
    p.add_argument("--jemalloc", default="",
                   help="path of libjemalloc.so.2 to preload, keeping its pages "
                        "(JEMALLOC_CONF; module docstring)")
    p.add_argument("--jemalloc_sides", default="ours", help="sides that --jemalloc preloads into")
    p.add_argument("--worker", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.cases, args.worker, args)
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(header("train step against Hugging Face (benchmarks/peer_step.py)"))
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} torch threads; turns of {args.block} steps, {args.runs} timed per "
          f"side; load average before: {os.getloadavg()[0]:.1f}; "
          f"malloc huge pages (THP {thp_mode()}): {args.hugetlb or 'neither'}; "
          f"jemalloc: {args.jemalloc and args.jemalloc_sides or 'no'}")
    mm_jax, mm_torch = measure_matmul_flops(), torch_matmul_flops()
    rows = []
    for name in args.cases.split(","):
        flops, peer, units, unit = CASES[name][2:]
        ours, theirs = Worker(name, "ours", args), Worker(name, "theirs", args)
        for _ in range(args.warmup):
            ours.step()
            theirs.step()
        t_ours, t_theirs = [], []
        while len(t_ours) < args.runs:
            n = min(args.block, args.runs - len(t_ours))
            t_ours += [ours.step() for _ in range(n)]
            t_theirs += [theirs.step() for _ in range(n)]
        ours.close()
        theirs.close()
        a, b, f = statistics.median(t_ours), statistics.median(t_theirs), flops()
        rows.append((name, units, unit, peer, a, b, f))
        print(f"# {name}: ours {a:.3f} s, {peer} {b:.3f} s per step: {b / a:.2f}x", flush=True)
    # The matmul baselines again at the end; the best of both measurements is each peak.
    mm_jax, mm_torch = max(mm_jax, measure_matmul_flops()), max(mm_torch, torch_matmul_flops())
    print(f"\n# 2048^3 float32 matmul (best of start and end): JAX {mm_jax / 1e9:.1f} GFLOP/s, "
          f"PyTorch {mm_torch / 1e9:.1f} GFLOP/s")
    print("| case | ours step s | theirs | theirs step s | ours / theirs (throughput) | "
          "ours GFLOP/s (/ JAX matmul) | theirs GFLOP/s (/ torch matmul) |")
    print("|---|---|---|---|---|---|---|")
    for name, units, unit, peer, a, b, f in rows:
        print(f"| {name} ({units} {unit}/step) | {a:.3f} | {peer} | {b:.3f} | **{b / a:.2f}x** | "
              f"{f / a / 1e9:.1f} ({f / a / mm_jax:.0%}) | {f / b / 1e9:.1f} ({f / b / mm_torch:.0%}) |")


if __name__ == "__main__":
    main()
