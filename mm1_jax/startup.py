"""The one start-up shared by training, evaluation and the tools.

Every check that needs only the config lives in `config.validate`; every check against the world
(files, devices, processes, the tokenizer's vocabulary) lives in `start`, which runs before
anything is compiled, so a mistake fails in seconds naming the config key to change. What start-up
discovers travels as values, never written back into the config:

- `SpecialIds`: the tokenizer's special token ids (`<image>`, `<pad>`, ...), for the model, the
  pipeline and evaluation;
- the device mesh, and the kernels the layers run on its devices (`Kernels`: "auto" resolved
  here, once; no layer looks at the platform);
- the abstract model (shapes, logical axis names) built once, with its statistics (parameter
  counts, MM1's eta(N), training FLOPs per token and per image) derived from it;
- the peak learning rate: `optim.lr`, or eta(N) (MM1 eq. 1).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from mm1_jax import sharding
from mm1_jax.config import CUDNN_DTYPES, ConfigError, check_batch_split, validate
from mm1_jax.data import pipeline
from mm1_jax.data.tokenizer import SpecialIds, Tokenizer, TokenizerError
from mm1_jax.models.kernels import Kernels
from mm1_jax.models.mm1 import MM1Model
from mm1_jax.models.stats import ModelStats, model_stats


@dataclasses.dataclass(frozen=True)
class AbstractModel:
    """The model's structure without memory: graph, parameter shapes, logical axis names."""

    graphdef: Any  # nnx GraphDef of MM1Model
    params: dict  # nested pure dict of jax.ShapeDtypeStruct
    names: dict[str, tuple]  # "/"-joined parameter path -> logical axis names
    stats: ModelStats


@dataclasses.dataclass(frozen=True)
class Run:
    """What start-up resolved for one run (training or evaluation)."""

    cfg: ml_collections.ConfigDict  # validated; read, never written
    special: SpecialIds
    mesh: Mesh
    kernels: Kernels  # resolved for the mesh's devices; the model is built with them
    model: AbstractModel
    peak_lr: float  # optim.lr, or eta(N) of MM1 eq. (1)


def build_model(m: ml_collections.ConfigDict, special: SpecialIds, seed: int,
                kernels: Kernels = Kernels()) -> MM1Model:
    """The MM1 model of `m` (`cfg.model`) with freshly initialised parameters."""
    return MM1Model(m, image_token_id=special.image, kernels=kernels, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ml_collections.ConfigDict, special: SpecialIds, *,
                   kernels: Kernels = Kernels(), with_image_flops: bool = True) -> AbstractModel:
    """The model under `nnx.eval_shape` (nothing allocated) and its statistics."""
    model = nnx.eval_shape(lambda: build_model(cfg.model, special, cfg.seed, kernels))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"the model holds non-parameter state the trainer does not carry: {rest}")
    names = {"/".join(map(str, path)): var.get_metadata().get("out_sharding")
             for path, var in nnx.to_flat_state(params)}
    stats = model_stats(model, cfg.model, cfg.train.seq_len, with_image_flops=with_image_flops)
    return AbstractModel(graphdef=graphdef, params=nnx.to_pure_dict(params), names=names,
                         stats=stats)


def special_ids(cfg: ml_collections.ConfigDict, special: SpecialIds | None = None) -> SpecialIds:
    """The special ids of `data.tokenizer` (checked against the decoder's vocabulary), or
    `special` for runs without a tokenizer (synthetic batches)."""
    path = cfg.data.tokenizer
    if not path:
        if special is None:
            raise ConfigError("config.data.tokenizer is not set: give the LLM's tokenizer "
                              "(a sentencepiece .model, a tokenizer.json or a directory holding "
                              "one), or train one with `python -m mm1_jax.data.tokenizer`")
        return special
    if not os.path.exists(path):
        raise ConfigError(f"config.data.tokenizer: {path!r} does not exist; train one with "
                          "`python -m mm1_jax.data.tokenizer --input=<corpus> --output=<path>`")
    try:
        tok = Tokenizer(path)
    except TokenizerError as e:
        raise ConfigError(f"config.data.tokenizer: {e}") from None
    d = cfg.model.decoder
    vocab = d.real_vocab_size or d.vocab_size  # rows past real_vocab_size are padding
    if vocab < tok.vocab_size:
        raise ConfigError(
            f"config.model.decoder.vocab_size: {vocab} tokens (real_vocab_size, else vocab_size) "
            f"are fewer than the tokenizer's {tok.vocab_size} pieces ({path}, its special pieces "
            f"included); use >= {tok.vocab_size} (a converted decoder grows its vocabulary with "
            "`python -m mm1_jax.convert decoder --vocab_size`)")
    return tok.special


def check_evals(cfg: ml_collections.ConfigDict) -> None:
    """Every file an evaluator names exists (its type's required fields were checked by
    config.validate)."""
    for name, e in cfg.evals.items():
        paths = {"annotations": e.annotations, "questions": e.questions, "images": e.images,
                 "dir": e.dir or (cfg.data.dir if e.type == "demo" else None)}
        paths.update({f"files[{i}]": f for i, f in enumerate(e.files)})
        for field, path in paths.items():
            if path and not os.path.exists(path):
                raise ConfigError(f"config.evals.{name}.{field}: {path!r} does not exist")


def resolve_kernels(m: ml_collections.ConfigDict, platform: str) -> Kernels:
    """The kernels `m.attention` and `m.moe.grouped_matmul` (`cfg.model`) run as on devices of
    `platform`: "auto" is splash attention and the megablox grouped matmul on TPU, cuDNN
    attention on GPU in CUDNN_DTYPES, XLA otherwise. The Pallas TPU kernels also run on CPU,
    interpreted (for tests); a kernel that cannot run on `platform` is a ConfigError."""
    attention, gmm = m.attention, m.moe.grouped_matmul
    if attention == "auto":
        attention = ("splash" if platform == "tpu" else
                     "cudnn" if platform == "gpu" and m.dtype in CUDNN_DTYPES else "xla")
    elif attention == "splash" and platform not in ("tpu", "cpu"):
        raise ConfigError(f"config.model.attention: 'splash' is a Pallas TPU kernel and the "
                          f"devices are {platform}; use 'auto' or 'xla'")
    elif attention == "cudnn" and platform != "gpu":
        raise ConfigError(f"config.model.attention: 'cudnn' needs NVIDIA GPUs and the devices "
                          f"are {platform}; use 'auto' or 'xla'")
    if gmm == "auto":
        gmm = "megablox" if platform == "tpu" else "xla"
    elif gmm == "megablox" and platform not in ("tpu", "cpu"):
        raise ConfigError(f"config.model.moe.grouped_matmul: 'megablox' is a Pallas TPU kernel "
                          f"and the devices are {platform}; use 'auto' or 'xla'")
    return Kernels(attention=attention, grouped_matmul=gmm, interpret=platform == "cpu")


def start(cfg: ml_collections.ConfigDict, *, devices: Sequence[Any] | None = None,
          special: SpecialIds | None = None, corpus: bool = True) -> Run:
    """Validates `cfg`, checks it against the world and resolves what the run needs.

    devices: the mesh's devices (default all); special: the special ids of a run without a
    tokenizer (synthetic batches); corpus: whether the run reads `data.dir` (training on the
    Grain pipeline; evaluation and synthetic runs do not).
    """
    cfg = validate(cfg)
    special = special_ids(cfg, special)
    if corpus:
        pipeline.check_corpus(cfg)
    check_evals(cfg)
    mesh = sharding.make_mesh(cfg.mesh.shape, devices)
    check_batch_split(cfg.train, mesh_sizes=dict(mesh.shape), processes=jax.process_count())
    kernels = resolve_kernels(cfg.model, mesh.devices.flat[0].platform)
    model = abstract_model(cfg, special, kernels=kernels)
    peak = float(cfg.optim.lr) if cfg.optim.lr is not None else model.stats.peak_lr
    return Run(cfg=cfg, special=special, mesh=mesh, kernels=kernels, model=model, peak_lr=peak)
