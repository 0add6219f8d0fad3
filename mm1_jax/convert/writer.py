"""Converting a local Hugging Face / OpenCLIP checkpoint into a converted component directory
(`state/` + `model.json`, see `mm1_jax.convert.common`; a decoder also keeps its tokenizer in
`tokenizer/`) sharded for a target mesh.

The parameters are streamed (mm1_jax/convert/stream.py): every device's shard is read from the
memory-mapped safetensors on its own, then Orbax writes the sharded arrays.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.sharding import NamedSharding

from mm1_jax import sharding
from mm1_jax.config import MESH_AXES, ConfigError, base_config
from mm1_jax.convert import clip, llama, source as source_lib
from mm1_jax.convert.common import ARCH_FIELDS
from mm1_jax.convert.stream import Reader, SafetensorsReader, to_sharded
from mm1_jax.errors import CheckpointError


def read_json(directory: str, *names: str) -> tuple[str, dict]:
    """The first of `names` present in `directory`, parsed."""
    for name in names:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path) as f:
                return name, json.load(f)
    raise CheckpointError(f"{directory} has none of {names}: the converter reads the "
                          "architecture from the checkpoint's own config, never a default")


def _component(component: str, cfg: ml_collections.ConfigDict) -> nnx.Module:
    """The abstract (shape-only) module of one component, for its parameter shapes and names."""
    from mm1_jax.models.mm1 import COMPONENTS

    return nnx.eval_shape(lambda: COMPONENTS[component](cfg.model, nnx.Rngs(0)))


def make_target_mesh(shape: Sequence[int]) -> jax.sharding.Mesh:
    """A mesh of `shape` (sizes of MESH_AXES, one may be -1) over this host's first devices."""
    shape = sharding.resolve_mesh_shape(shape, len(jax.devices())) if -1 in shape else tuple(shape)
    n = math.prod(shape)
    if n > len(jax.devices()):
        raise ConfigError(f"--mesh {shape} needs {n} devices; this host has {len(jax.devices())} "
                         "(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=jax.devices()[:n])


def convert(component: str, leaves: dict, reader: Reader, cfg: ml_collections.ConfigDict,
            out: str, *, mesh: jax.sharding.Mesh, source: str, architecture: str,
            meta: dict | None = None) -> dict:
    """Streams `leaves` into arrays sharded on `mesh` and writes `out/state` + `out/model.json`
    (with `meta`'s fields). Returns the sharded arrays {path: jax.Array}."""
    module = _component(component, cfg)
    flat = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
    missing = sorted(set(flat) - set(leaves), key=str)
    extra = sorted(set(leaves) - set(flat), key=str)
    if missing or extra:
        raise ValueError(f"converter and model disagree: model parameters not provided {missing[:5]}, "
                         f"converted parameters the model lacks {extra[:5]}")
    for path, var in flat.items():
        if tuple(var.shape) != leaves[path].shape:
            raise ValueError(f"shape mismatch at {'/'.join(map(str, path))}: converted "
                             f"{leaves[path].shape} != model {tuple(var.shape)}")
    shardings = {p: NamedSharding(mesh, sharding.spec_for(var.shape, var.get_metadata().get("out_sharding"), mesh))
                 for p, var in flat.items()}
    arrays = to_sharded(leaves, reader, shardings)
    os.makedirs(out, exist_ok=True)
    state_dir = os.path.join(os.path.abspath(out), "state")
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(state_dir, {"params": {component: traverse_util.unflatten_dict(arrays)}}, force=True)
    sections = {"vision": ("vision",), "decoder": ("decoder", "moe")}[component]
    model = {s: {f: _plain(cfg.model[s][f]) for f in ARCH_FIELDS[s]} for s in sections}
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump({"component": component, "source": os.path.abspath(source),
                   "architecture": architecture, "model": model, **(meta or {})}, f, indent=2)
    return arrays


def _plain(x):
    return list(x) if isinstance(x, tuple) else x


def vision_config(arch: dict, *, image_size: int | None, feature_layer: int) -> ml_collections.ConfigDict:
    cfg = base_config()
    cfg.model.dtype = "float32"
    cfg.model.vision.update({**arch, "feature_layer": feature_layer})
    if image_size:
        cfg.model.vision.image_size = image_size
    return cfg


def convert_vision(src: str, out: str, *, image_size: int | None = None, feature_layer: int = -1,
                   mesh_shape: Sequence[int] = (1, 1, 1, 1)) -> tuple[ml_collections.ConfigDict, Reader]:
    """HF CLIP (config.json) or OpenCLIP (open_clip_config.json) in `src` -> `out`."""
    source_lib.check_source(src, "vision")
    name, config = read_json(src, "open_clip_config.json", "config.json")
    openclip = name == "open_clip_config.json"
    arch = clip.openclip_arch(config) if openclip else clip.hf_clip_arch(config)
    cfg = vision_config(arch, image_size=image_size, feature_layer=feature_layer)
    reader = SafetensorsReader(src)
    leaves = (clip.openclip_leaves if openclip else clip.hf_clip_leaves)(reader, cfg)
    convert("vision", leaves, reader, cfg, out, mesh=make_target_mesh(mesh_shape), source=src,
            architecture="open_clip" if openclip else (config.get("architectures") or ["CLIP"])[0])
    return cfg, reader


def decoder_config(config: dict, *, max_seq_len: int | None = None, vocab_size: int | None = None,
                   pad_vocab_multiple: int = 1, upcycle_experts: int = 0, upcycle_every: int = 1
                   ) -> ml_collections.ConfigDict:
    """Our config for an HF decoder config.json, with the vocabulary / upcycling options."""
    decoder, moe = llama.decoder_arch(config, max_seq_len=max_seq_len)
    decoder = llama.extend_vocab(decoder, vocab_size, pad_vocab_multiple)
    if upcycle_experts:
        if moe["num_experts"]:
            raise CheckpointError("--upcycle_experts applies to dense checkpoints; this one is MoE already")
        moe = {"num_experts": upcycle_experts, "top_k": 2, "every": upcycle_every,
               "expert_mlp_dim": decoder["mlp_dim"]}
    cfg = base_config()
    cfg.model.dtype = "float32"
    cfg.model.decoder.update(decoder)
    cfg.model.moe.update(moe)
    return cfg


def convert_decoder(src: str, out: str, *, mesh_shape: Sequence[int] = (1, 1, 1, 1),
                    router_seed: int = 0, tokenizer: str | None = None, **options
                    ) -> tuple[ml_collections.ConfigDict, Reader]:
    """An HF Llama / Mistral / Qwen2 / Mixtral directory `src` -> `out` (options: decoder_config).

    The LLM's tokenizer (`tokenizer`, else the one in `src`, if any) is kept in `out/tokenizer/`,
    and the vocabulary grows to hold its ids with mm1_jax's special tokens."""
    source_lib.check_source(src, "decoder")
    _, config = read_json(src, "config.json")
    meta = _with_tokenizer(src, out, tokenizer, config, options)
    cfg = decoder_config(config, **options)
    reader = SafetensorsReader(src)
    leaves = llama.decoder_leaves(reader, cfg, router_seed=router_seed)
    convert("decoder", leaves, reader, cfg, out, mesh=make_target_mesh(mesh_shape), source=src,
            architecture=config["architectures"][0], meta=meta)
    return cfg, reader


def _with_tokenizer(src: str, out: str, tokenizer: str | None, config: dict, options: dict) -> dict:
    """Sets options["vocab_size"] for the tokenizer of `src` (or `tokenizer`), copies its files
    into `out`, and returns model.json's fields naming it ({} without a tokenizer)."""
    tok = source_lib.find_tokenizer(src, tokenizer)
    options["vocab_size"] = source_lib.vocab_rows(tok, options.get("vocab_size"), config["vocab_size"])
    if tok is None:
        return {}
    return {"tokenizer": source_lib.copy_tokenizer(tok, out), "tokenizer_vocab_size": tok.vocab_size}
