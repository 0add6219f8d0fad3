"""The typed base config every experiment overrides, and its validation.

An experiment file in `experiments/` defines `get_config()` that starts from `base_config()` and
changes only what differs. `ml_collections.ConfigDict` keeps field types: assigning a string to an
int field fails at the flag, not deep inside a jitted function. `validate()` checks the relations
between fields (heads dividing width, square token counts, ...) and names the offending key.

Sources: MM1 = arXiv 2403.09611 (sections 3-5); CLIP = Radford et al. 2021; Honeybee = Cha et al.
2023 (C-Abstractor); GShard = Lepikhin et al. 2020; ST-MoE = Zoph et al. 2022 (router z-loss).
"""

from __future__ import annotations

import math

import ml_collections
from ml_collections import config_dict

from mm1_jax.data.kinds import KINDS
from mm1_jax.errors import ConfigError  # also reachable as mm1_jax.config.ConfigError

CONNECTORS = ("c_abstractor", "avg_pool", "attn_pool")
VISION_ACTS = ("quick_gelu", "gelu")
MOE_MODES = ("capacity", "dropless")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attn_out")
ATTENTIONS = ("auto", "xla", "splash", "cudnn")  # model.attention (mm1_jax/models/attention.py)
GROUPED_MATMULS = ("auto", "xla", "megablox")  # model.moe.grouped_matmul (mm1_jax/models/moe.py)
CUDNN_DTYPES = ("bfloat16", "float16")  # the compute dtypes of cuDNN's flash attention
DTYPES = ("float32", "bfloat16", "float16")
MESH_AXES = ("data", "fsdp", "tensor", "expert")
MIX_LEVELS = ("sequence", "item")
# Mesh axes the batch is split over (mm1_jax/sharding.py maps the logical "batch" axis to them).
BATCH_MESH_AXES = ("data", "fsdp", "expert")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")  # data.interpolation (PIL filters)
RESIZE_MODES = ("center_crop", "squash")  # data.resize_mode




def base_config() -> ml_collections.ConfigDict:
    """Defaults: the MM1 ablation setup (ViT-L/14-336, C-Abstractor 144, 1.2B-class decoder)."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.model = _model()

    # ---------------------------------------------------------------- init_from
    # Converted checkpoints to start a fresh run from, per component (docs/convert.md): a
    # directory written by `python -m mm1_jax.convert`, or a run's `<workdir>/checkpoints/<step>`
    # (the transfer recipe's stage 2). Restored straight into the training state's sharding;
    # a component left None starts from its random initialisation. Ignored when the run
    # resumes from its own checkpoint.
    c.init_from = ml_collections.ConfigDict()
    c.init_from.vision = config_dict.placeholder(str)
    c.init_from.connector = config_dict.placeholder(str)
    c.init_from.decoder = config_dict.placeholder(str)

    c.data, c.train, c.optim = _data(), _train(), _optim()

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 1000
    c.checkpoint.keep = 3  # keep the newest N ...
    c.checkpoint.keep_period = 0  # ... and every M-th step forever (0 = off)
    c.checkpoint.async_save = True

    # ---------------------------------------------------------------- evaluation
    # Named evaluators (big_vision's `config.evals`): each entry is built by
    # mm1_jax.eval.evaluators.from_config, run by the trainer every `every` steps and at the end
    # (`at_end`), and by `python -m mm1_jax.eval` on a checkpoint. Metric names are
    # `<entry name>/<metric>`. Use `evaluator()` below for an entry with every field; see
    # EVAL_TYPES for what each type reads.
    c.evals = ml_collections.ConfigDict()

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1, 1)  # sizes of MESH_AXES; one -1 is inferred from the device count
    return c


def _model() -> ml_collections.ConfigDict:
    """`cfg.model`: compute settings, then each component's own part."""
    model = ml_collections.ConfigDict()
    model.dtype = "bfloat16"  # compute dtype (SPEC: bf16 compute, float32 master weights)
    model.param_dtype = "float32"
    model.remat = "full"  # one of REMAT_POLICIES; applied to every scanned block
    # One of ATTENTIONS: the decoder's attention kernel. "xla" materialises the [t, s] scores;
    # "splash" (Pallas TPU kernel) and "cudnn" (cuDNN flash attention) do not. "auto": splash on
    # TPU, cudnn on GPU in CUDNN_DTYPES, xla elsewhere, by the platform of the devices in use.
    model.attention = "auto"
    # Training only: the share of image slots the encoder computes, in (0, 1]. Each batch shard
    # (a chip's rows) encodes its filled slots in a buffer of ceil(image_budget x its slots);
    # images beyond it are left out, their placeholders get zeros, and they are counted in
    # `data/images_over_budget` (mm1_jax/models/mm1.py). None (or 1.0): every slot, filled or
    # not. How small it may be depends on the rows per chip (benchmarks/data_mixture.py
    # --groups). Evaluation and generation always encode every image.
    model.image_budget = config_dict.placeholder(float)
    # Training only: the LM head and its cross-entropy run fused, in this many chunks of the
    # sequence (the largest count <= this dividing train.seq_len), each chunk's logits turned
    # into its gradients at once, so no [batch, seq, vocab] logits are kept
    # (mm1_jax/models/head_loss.py). 0: the plain path, full logits then cross-entropy.
    model.loss_chunks = 4
    model.vision, model.connector = _vision(), _connector()
    model.decoder, model.moe = _decoder(), _moe()
    return model


def _vision() -> ml_collections.ConfigDict:
    """`cfg.model.vision`: the CLIP ViT image encoder (MM1 section 3.2)."""
    v = ml_collections.ConfigDict()
    v.image_size = 336  # MM1 ablations: ViT-L/14 at 336 (section 3.2)
    v.patch_size = 14
    v.width = 1024
    v.depth = 24
    v.heads = 16
    v.mlp_dim = 4096
    # CLIP's activation. MM1's DFN-5B ViT-H/14-378 is the QuickGELU variant (OpenCLIP
    # `ViT-H-14-378-quickgelu`); "gelu" for towers trained with exact GELU (e.g. OpenCLIP's
    # non-quickgelu ViTs, SigLIP).
    v.act = "quick_gelu"
    v.norm_eps = 1e-5
    # Which block's output feeds the connector: -1 = last, -2 = penultimate (LLaVA's choice).
    v.feature_layer = -1
    # Image normalisation (CLIP defaults), applied on device to the pipeline's uint8 pixels.
    v.mean = (0.48145466, 0.4578275, 0.40821073)
    v.std = (0.26862954, 0.26130258, 0.27577711)
    return v


def _connector() -> ml_collections.ConfigDict:
    """`cfg.model.connector`: the vision-language connector (MM1 section 3.2)."""
    k = ml_collections.ConfigDict()
    k.kind = "c_abstractor"  # one of CONNECTORS (MM1 section 3.2, Fig. 4)
    k.num_tokens = 144  # image tokens per image; a square for c_abstractor / avg_pool
    k.hidden = 1024  # C-Abstractor hidden width (Honeybee default)
    k.depth = 3  # RegNet blocks per stage (Honeybee "depth")
    k.mlp_depth = 2  # readout: Linear, SiLU, Linear
    k.se_ratio = 0.25  # squeeze-excite reduction of the RegNet bottleneck
    k.attn_heads = 8  # attn_pool only
    return k


def _decoder() -> ml_collections.ConfigDict:
    """`cfg.model.decoder`: the Llama-compatible decoder."""
    d = ml_collections.ConfigDict()
    d.vocab_size = 32_000
    d.width = 2048
    d.depth = 24
    d.heads = 16
    d.kv_heads = 16  # < heads for grouped-query attention
    d.head_dim = 128
    d.mlp_dim = 5632  # SwiGLU hidden size
    d.rope_theta = 10_000.0
    d.norm_eps = 1e-5
    d.tie_embeddings = False
    d.max_seq_len = 4096  # only for FLOP accounting / sanity checks; RoPE has no table
    d.attn_bias = False  # q/k/v projection biases (Qwen2); Llama and Mistral have none
    # Tokens the vocabulary really holds when `vocab_size` is padded (to a multiple of 128, for
    # sharding; `python -m mm1_jax.convert decoder --pad_vocab_multiple`): the logits of rows
    # from here on are masked. None = every row is a token.
    d.real_vocab_size = config_dict.placeholder(int)
    return d


def _moe() -> ml_collections.ConfigDict:
    """`cfg.model.moe`: the top-2 mixture of experts (MM1 section 4); 0 experts = dense."""
    m = ml_collections.ConfigDict()
    m.num_experts = 0  # 0 = dense decoder
    m.every = 2  # a sparse FFN replaces every `every`-th dense FFN (3B-MoE: 2, 7B-MoE: 4)
    m.top_k = 2  # GShard top-2
    m.expert_mlp_dim = config_dict.placeholder(int)  # defaults to decoder.mlp_dim
    m.capacity_factor = 1.25  # training capacity factor (GShard); inference never drops
    m.mode = "capacity"  # training: "capacity" (index dispatch, drops over capacity) or "dropless"
    # One of GROUPED_MATMULS: the dropless path's grouped matmul (inference always runs it).
    # "auto": JAX's Pallas megablox kernel on TPU, `jax.lax.ragged_dot` elsewhere.
    m.grouped_matmul = "auto"
    m.load_balance_coef = 0.01  # MM1 section 4
    m.z_loss_coef = 0.001  # MM1 section 4 (ST-MoE router z-loss)
    m.group_size = 4096  # tokens per routing group, capacity path; a group never spans two rows
    return m


def _data() -> ml_collections.ConfigDict:
    """`cfg.data`: the corpus, the 45/45/10 mixture (MM1 section 4) and the input pipeline."""
    data = ml_collections.ConfigDict()
    data.dir = config_dict.placeholder(str)  # ArrayRecord shards: <dir>/<kind>/*.array_record
    # sentencepiece .model, Hugging Face tokenizer.json, or a directory holding one
    # (mm1_jax/data/tokenizer.py); default: the one init_from.decoder was converted with.
    data.tokenizer = config_dict.placeholder(str)
    data.max_images = 16  # per packed sequence (MM1 section 4)
    data.mixture = ml_collections.ConfigDict(
        {"interleaved": 0.45, "caption": 0.45, "text": 0.10}
    )  # MM1 section 4 final mix: shares of training sequences (see mix_level)
    # What the mixture weights are shares of. "sequence": each kind is packed into rows on its
    # own and the rows are mixed, so the weights are shares of training sequences, as in MM1
    # (and AXLearn, which mixes packed sources). "item": items are mixed before packing (the
    # old behaviour); items differ ~7x in length, so the weights are then far from the share
    # of sequences or tokens (docs/data.md).
    data.mix_level = "sequence"
    data.shuffle_seed = 0
    data.worker_count = 0  # grain worker processes; 0 = in-process
    data.prefetch = 2  # batches prefetched ahead of the step (a thread, or per worker)
    # Images are resized to model.vision.image_size (uint8; the model normalises on device).
    data.interpolation = "bicubic"  # nearest | bilinear | bicubic (CLIP) | lanczos
    data.resize_mode = "center_crop"  # center_crop (CLIP: central square) | squash (whole image)
    # Threads reading + decoding items (PIL frees the GIL), and decoded items buffered ahead of
    # the packer: per process, and per kind when mix_level is "sequence" (a packer per kind).
    data.read_threads = 4
    data.read_buffer = 64
    # First-fit packing keeps this many rows open (at least the per-process batch; per kind when
    # mix_level is "sequence"); more rows waste less padding and hold more items in memory (docs/data.md, benchmarks/data_packing.py).
    data.packing_bins = 32
    return data


def _train() -> ml_collections.ConfigDict:
    """`cfg.train`: steps, batch and sequence (MM1 section 4), and the loop's settings."""
    train = ml_collections.ConfigDict()
    train.steps = 200_000  # MM1 section 4
    train.batch_size = 512  # global, in sequences
    train.seq_len = 4096
    train.grad_accum = 1
    train.log_every = 10
    train.max_bad_steps = 10  # consecutive non-finite steps before the run stops
    # Peak FLOP/s of one device for perf/mfu; None = a table of known accelerators, or on CPU a
    # float32 matmul measured once at start-up (mm1_jax/train/metrics.py).
    train.peak_flops = config_dict.placeholder(float)
    # JAX's persistent compilation cache: a restart (pre-emption, resume) reuses the compiled
    # step instead of compiling it again. "" turns it off.
    train.compile_cache_dir = "~/.cache/mm1_jax/jax"
    return train


def _optim() -> ml_collections.ConfigDict:
    """`cfg.optim`: AdamW with MM1's eta(N) and lambda = 0.1 eta, freezing and multipliers."""
    o = ml_collections.ConfigDict()
    o.lr = config_dict.placeholder(float)  # None: eta(N) from MM1 eq. (1)
    o.weight_decay_ratio = 0.1  # lambda = 0.1 * eta (MM1 section 4)
    o.warmup_steps = 2000
    o.end_lr_ratio = 0.1  # cosine decays to this fraction of the peak
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.clip_norm = 1.0
    # Per-group learning-rate multipliers: ((regex over "/"-joined parameter path, mult), ...).
    # A multiplier of 0 freezes the group (no update, no optimizer state moment drift).
    o.lr_mult = ()
    o.freeze = ()  # regexes of frozen parameter paths
    # Weight decay skips every parameter of rank < 2 (biases, norm gains; common practice, the
    # paper does not say; mm1_jax/train/optimizer.py). Regexes here exempt further parameters.
    o.no_decay = ()
    return o


# Evaluator types and the fields each one needs set (mm1_jax/eval/evaluators.py).
EVAL_TYPES = {
    "captioning": ("annotations", "images"),  # COCO-format captions JSON + image folder: CIDEr
    "vqa": ("questions", "annotations", "images"),  # VQAv2-format JSONs + folder: VQA accuracy
    "perplexity": ("files",),  # held-out text (record shards/dirs, .jsonl, plain text): ppl
    "demo": ("dir",),  # the embedded demo corpus's held-out sets (mm1_jax/eval/demo.py)
}


def evaluator(type: str, **fields) -> ml_collections.ConfigDict:  # noqa: A002
    """One `config.evals` entry with every field at its default, `fields` overriding; the
    unused fields of a type stay at their defaults (one schema keeps `--config.evals.x.k=v`
    overrides typed)."""
    e = ml_collections.ConfigDict()
    e.type = type  # one of EVAL_TYPES
    e.every = 0  # run every K training steps (0 = not periodically)
    e.at_end = True  # run once training reaches train.steps
    e.annotations = config_dict.placeholder(str)  # captioning: COCO captions; vqa: answers
    e.questions = config_dict.placeholder(str)  # vqa: VQAv2 questions JSON
    e.images = config_dict.placeholder(str)  # folder holding the files' images
    e.files = ()  # perplexity: held-out text files or record directories
    e.dir = config_dict.placeholder(str)  # demo: the demo corpus (default data.dir)
    e.shots = (0, 4, 8)  # in-context examples per prompt (MM1 reports 0, 4 and 8)
    e.support_fraction = 0.5  # share of images (per file) that serve as in-context examples
    e.limit = config_dict.placeholder(int)  # score only the first N examples (quick runs)
    e.batch_size = 8  # prompts per generation batch
    e.max_new_tokens = 20  # captioning 20, VQA short answers need fewer
    e.seed = 0
    for k, v in fields.items():
        if k not in e:
            raise ConfigError(f"evaluator field {k!r} does not exist; fields: {sorted(e.keys())}")
        e[k] = v
    return e


# ------------------------------------------------------------------------- derived quantities


def peak_lr(non_embedding_params: float) -> float:
    """MM1 eq. (1): eta = exp(-0.4214 ln N - 0.5535), N = non-embedding parameters."""
    return math.exp(-0.4214 * math.log(non_embedding_params) - 0.5535)


def vision_grid(v: ml_collections.ConfigDict) -> int:
    """Patches per side of the vision encoder's grid (v = `cfg.model.vision`)."""
    return v.image_size // v.patch_size


def moe_period(moe: ml_collections.ConfigDict) -> int:
    """Decoder layers per scanned period: `moe.every` for an MoE decoder, 1 for a dense one."""
    return moe.every if moe.num_experts else 1


def moe_layer_ids(depth: int, moe: ml_collections.ConfigDict) -> list[int]:
    """0-based decoder layers whose FFN is sparse: the last layer of every period. The one
    statement of which layers are MoE (the decoder builds its periods from it)."""
    if not moe.num_experts:
        return []
    return [i for i in range(depth) if (i + 1) % moe.every == 0]


def expert_mlp_dim(d: ml_collections.ConfigDict, moe: ml_collections.ConfigDict) -> int:
    """Each expert's SwiGLU hidden size (default: the dense FFN's)."""
    return moe.expert_mlp_dim if moe.expert_mlp_dim is not None else d.mlp_dim


# ------------------------------------------------------------------------- validation


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config.{key}: {msg}")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks relations between fields; raises ConfigError naming the key and the fix."""
    _check_model(cfg)
    _check_data_and_training(cfg)
    _check_mesh(cfg)
    _check_evals(cfg)
    return cfg


def _check_model(cfg: ml_collections.ConfigDict) -> None:
    v, k, d, m = cfg.model.vision, cfg.model.connector, cfg.model.decoder, cfg.model.moe
    for key in ("dtype", "param_dtype"):
        _require(cfg.model[key] in DTYPES, f"model.{key}", f"{cfg.model[key]!r} is not one of {DTYPES}")
    _require(cfg.model.remat in REMAT_POLICIES, "model.remat",
             f"{cfg.model.remat!r} is not one of {REMAT_POLICIES}")
    _require(cfg.model.attention in ATTENTIONS, "model.attention",
             f"{cfg.model.attention!r} is not one of {ATTENTIONS}")
    _require(cfg.model.attention != "cudnn" or cfg.model.dtype in CUDNN_DTYPES, "model.attention",
             f"cuDNN's fused attention computes in {CUDNN_DTYPES}, not model.dtype="
             f"{cfg.model.dtype!r}; change model.dtype or use 'xla'")
    if cfg.model.image_budget is not None:
        _require(0 < cfg.model.image_budget <= 1, "model.image_budget",
                 f"{cfg.model.image_budget} must be in (0, 1] (a share of the image slots; "
                 "None or 1.0 encodes every slot)")

    _require(v.image_size % v.patch_size == 0, "model.vision.image_size",
             f"{v.image_size} is not a multiple of patch_size {v.patch_size}")
    _require(v.width % v.heads == 0, "model.vision.heads",
             f"{v.heads} heads do not divide width {v.width}")
    _require(v.act in VISION_ACTS, "model.vision.act", f"{v.act!r} is not one of {VISION_ACTS}")
    _require(1 <= abs(v.feature_layer) <= v.depth, "model.vision.feature_layer",
             f"{v.feature_layer} is outside 1..{v.depth} (or -1..-{v.depth} counting from the end)")
    _require(len(v.mean) == 3 and len(v.std) == 3, "model.vision.mean/std", "need 3 channels each")

    _require(k.kind in CONNECTORS, "model.connector.kind",
             f"unknown connector {k.kind!r}; choose one of {CONNECTORS}")
    _require(k.num_tokens > 0, "model.connector.num_tokens", "must be positive")
    if k.kind in ("c_abstractor", "avg_pool"):
        side = math.isqrt(k.num_tokens)
        _require(side * side == k.num_tokens, "model.connector.num_tokens",
                 f"{k.kind} pools to a square grid, but {k.num_tokens} is not a square "
                 f"(use 64 or 144)")
        _require(side <= vision_grid(v), "model.connector.num_tokens",
                 f"{side}x{side} output is larger than the {vision_grid(v)}-patch grid")
    if k.kind == "attn_pool":
        _require(k.hidden % k.attn_heads == 0, "model.connector.attn_heads",
                 f"{k.attn_heads} heads do not divide hidden {k.hidden}")

    _require(d.heads % d.kv_heads == 0, "model.decoder.kv_heads",
             f"{d.kv_heads} kv heads do not divide {d.heads} query heads")
    _require(d.head_dim % 2 == 0, "model.decoder.head_dim", "RoPE needs an even head_dim")

    if d.real_vocab_size is not None:
        _require(0 < d.real_vocab_size <= d.vocab_size, "model.decoder.real_vocab_size",
                 f"{d.real_vocab_size} must be in 1..vocab_size ({d.vocab_size})")
    _require(set(cfg.init_from.keys()) <= {"vision", "connector", "decoder"}, "init_from",
             f"unknown components {sorted(set(cfg.init_from.keys()) - {'vision', 'connector', 'decoder'})}")

    if m.num_experts:
        _require(m.num_experts >= m.top_k, "model.moe.num_experts",
                 f"{m.num_experts} experts cannot serve top-{m.top_k} routing")
        _require(m.every >= 1 and d.depth % m.every == 0, "model.moe.every",
                 f"MoE period {m.every} does not divide decoder depth {d.depth}")
        _require(m.mode in MOE_MODES, "model.moe.mode", f"{m.mode!r} is not one of {MOE_MODES}")
        _require(m.grouped_matmul in GROUPED_MATMULS, "model.moe.grouped_matmul",
                 f"{m.grouped_matmul!r} is not one of {GROUPED_MATMULS}")
        _require(m.capacity_factor > 0, "model.moe.capacity_factor", "must be positive")


def _check_data_and_training(cfg: ml_collections.ConfigDict) -> None:
    k = cfg.model.connector
    mix = cfg.data.mixture
    _require(set(mix.keys()) <= set(KINDS), "data.mixture",
             f"unknown kinds {sorted(set(mix.keys()) - set(KINDS))}; use {KINDS}")
    _require(all(w >= 0 for w in mix.values()) and sum(mix.values()) > 0, "data.mixture",
             "weights must be non-negative with a positive sum")
    _require(cfg.data.mix_level in MIX_LEVELS, "data.mix_level",
             f"{cfg.data.mix_level!r} is not one of {MIX_LEVELS}")
    _require(cfg.data.max_images >= 0, "data.max_images", "must be >= 0")
    _require(cfg.train.seq_len > 0 and cfg.train.batch_size > 0, "train",
             "seq_len and batch_size must be positive")
    _require(cfg.data.max_images * k.num_tokens < cfg.train.seq_len or cfg.data.max_images == 0,
             "data.max_images", f"{cfg.data.max_images} images x {k.num_tokens} tokens do not fit "
             f"in train.seq_len={cfg.train.seq_len}")
    _require(cfg.train.grad_accum >= 1 and cfg.train.batch_size % cfg.train.grad_accum == 0,
             "train.grad_accum",
             f"{cfg.train.grad_accum} does not divide batch_size {cfg.train.batch_size}")

    _require(cfg.data.interpolation in INTERPOLATIONS, "data.interpolation",
             f"{cfg.data.interpolation!r} is not one of {INTERPOLATIONS}")
    _require(cfg.data.resize_mode in RESIZE_MODES, "data.resize_mode",
             f"{cfg.data.resize_mode!r} is not one of {RESIZE_MODES}")
    _require(cfg.checkpoint.every >= 1 and cfg.checkpoint.keep >= 1, "checkpoint",
             f"every ({cfg.checkpoint.every}) and keep ({cfg.checkpoint.keep}) must be >= 1")


def _check_mesh(cfg: ml_collections.ConfigDict) -> None:
    shape = tuple(cfg.mesh.shape)
    _require(len(shape) == len(MESH_AXES), "mesh.shape",
             f"{shape} must give one size per axis {MESH_AXES}")
    _require(sum(s == -1 for s in shape) <= 1 and all(s == -1 or s >= 1 for s in shape),
             "mesh.shape", f"{shape}: sizes must be >= 1 with at most one -1")
    sizes = dict(zip(MESH_AXES, shape))
    if all(sizes[a] != -1 for a in BATCH_MESH_AXES):  # else only the device count can tell
        check_batch_split(cfg.train, mesh_sizes=sizes)


def _check_evals(cfg: ml_collections.ConfigDict) -> None:
    _require(not cfg.evals or bool(cfg.data.tokenizer), "data.tokenizer",
             f"evaluators {sorted(cfg.evals)} encode their prompts with the model's tokenizer; "
             "set it (or remove the evaluators)")
    for name, e in cfg.evals.items():
        key = f"evals.{name}"
        _require(e.get("type") in EVAL_TYPES, f"{key}.type",
                 f"{e.get('type')!r} is not one of {tuple(EVAL_TYPES)}")
        for field in EVAL_TYPES[e.type]:
            if field == "dir":  # the demo evaluator defaults to the training corpus
                continue
            _require(bool(e.get(field)), f"{key}.{field}", f"a {e.type} evaluator needs it set")
        _require(e.every >= 0, f"{key}.every", "must be >= 0 (0 = only at the end)")
        _require(all(k >= 0 for k in e.shots), f"{key}.shots", f"{tuple(e.shots)} must be >= 0")
        _require(0 <= e.support_fraction < 1, f"{key}.support_fraction", "must be in [0, 1)")
        _require(e.support_fraction > 0 or not any(e.shots), f"{key}.support_fraction",
                 "0 leaves no in-context examples for shots > 0")


def check_batch_split(train: ml_collections.ConfigDict, *, mesh_sizes: dict[str, int] | None = None,
                      processes: int = 1) -> None:
    """The one statement of how the global batch (`train`: `cfg.train`) must split: into
    `train.grad_accum` micro-batches over the batch's mesh axes (`mesh_sizes`: axis -> size,
    when known), and over the `processes` that load it. `validate` applies it to a mesh shape
    without -1, start-up to the resolved mesh, the pipeline to its shard count."""
    b, accum = train.batch_size, train.grad_accum
    if mesh_sizes is not None:
        dp = math.prod(mesh_sizes[a] for a in BATCH_MESH_AXES)
        _require(b % (dp * accum) == 0, "train.batch_size",
                 f"{b} is not divisible by data parallelism "
                 f"({' x '.join(f'{a}={mesh_sizes[a]}' for a in BATCH_MESH_AXES)} = {dp}) x "
                 f"train.grad_accum ({accum}); use a multiple of {dp * accum}")
    _require(b % processes == 0, "train.batch_size",
             f"{b} sequences do not split over {processes} processes; use a multiple of "
             f"{processes}")


def load_experiment(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of `experiments/x.py[:arg]`, as `--config=` loads it, not yet validated."""
    import importlib.util
    import os

    file, _, arg = path.partition(":")
    if not os.path.exists(file):
        raise FileNotFoundError(f"config file {file!r} does not exist")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(file))[0], file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def load_config(path: str) -> ml_collections.ConfigDict:
    """Loads `experiments/x.py[:arg]` (its `get_config()`), as `--config=` does, and validates it."""
    return validate(load_experiment(path))
