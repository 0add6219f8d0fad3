"""Out of mm1_jax: the dense decoder as a Hugging Face checkpoint, and the whole MM1 model as one
safetensors file.

HF export: `model.safetensors` + `config.json` that `transformers` loads as `LlamaForCausalLM`
(or `Qwen2ForCausalLM` when the decoder has q/k/v biases). Padding rows of the vocabulary
(`decoder.real_vocab_size`) are dropped. It is the exact inverse of `convert.llama`:
Llama -> ours -> Llama gives identical tensors. Given the run's tokenizer, the export also
holds the tokenizer files (our special tokens included, at our ids) and `generation_config.json`
(bos, eos, pad), so `generate` stops at our end of text.

MM1 layout (`export_mm1` / `load_mm1`), one safetensors file:
  tensor names  our parameter paths joined by ".", e.g. `vision.blocks.q.kernel`,
                `decoder.periods.blocks.0.attn.wq`, `connector.readout.0.kernel`;
  shapes        ours, unchanged: scanned stacks keep their leading layers axis
                ([layers, ...] for vision blocks, [periods, ...] for decoder blocks, whose
                `blocks.<j>` is block j of every period), kernels are [in, out] (x @ W),
                attention weights are [width, heads, head_dim] / [heads, head_dim, width];
  dtype         float32 (the master weights);
  metadata      "format": "mm1_jax", "model": the `config.model` JSON the tensors are for.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_collections
import numpy as np

from mm1_jax.convert.stream import SafetensorsReader, save_safetensors
from mm1_jax.data.tokenizer import Tokenizer
from mm1_jax.errors import CheckpointError


def flat(tree: Mapping, sep: str = "/") -> dict[str, Any]:
    """Nested dict -> {"a<sep>b<sep>0": leaf} (integer keys become digits)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update({f"{k}{sep}{kk}": vv for kk, vv in flat(v, sep).items()})
        else:
            out[str(k)] = v
    return out


def hf_llama_tensors(params: Mapping, decoder: ml_collections.ConfigDict,
                     moe: ml_collections.ConfigDict | None = None) -> dict[str, np.ndarray]:
    """Our Decoder parameters (nested, numpy) -> HF Llama / Qwen2 state dict (float32)."""
    if moe is not None and moe.num_experts:
        raise CheckpointError("export to Hugging Face covers the dense decoder; this one has "
                              f"model.moe.num_experts={moe.num_experts}")
    d = decoder
    p = {k: np.asarray(v, np.float32) for k, v in flat(params).items()}
    real = d.real_vocab_size or d.vocab_size
    n, g, k, w = d.heads, d.kv_heads, d.head_dim, d.width
    out = {"model.embed_tokens.weight": p["embed"][:real], "model.norm.weight": p["final_norm/scale"]}
    if not d.tie_embeddings:
        out["lm_head.weight"] = p["lm_head/kernel"].T[:real]
    for i in range(d.depth):
        blk = lambda x: p[f"periods/blocks/0/{x}"][i]  # noqa: E731  a dense decoder: period = layer
        name = lambda x: f"model.layers.{i}.{x}"  # noqa: E731
        out[name("self_attn.q_proj.weight")] = blk("attn/wq").reshape(w, n * k).T
        out[name("self_attn.k_proj.weight")] = blk("attn/wk").reshape(w, g * k).T
        out[name("self_attn.v_proj.weight")] = blk("attn/wv").reshape(w, g * k).T
        out[name("self_attn.o_proj.weight")] = blk("attn/wo").reshape(n * k, w).T
        if d.attn_bias:
            for ours, theirs in (("bq", "q"), ("bk", "k"), ("bv", "v")):
                out[name(f"self_attn.{theirs}_proj.bias")] = blk(f"attn/{ours}").reshape(-1)
        out[name("input_layernorm.weight")] = blk("attn_norm/scale")
        out[name("post_attention_layernorm.weight")] = blk("ffn_norm/scale")
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            out[name(f"mlp.{theirs}.weight")] = blk(f"ffn/{ours}/kernel").T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_llama_config(decoder: ml_collections.ConfigDict) -> dict:
    d = decoder
    qwen = bool(d.attn_bias)
    return {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": d.real_vocab_size or d.vocab_size, "hidden_size": d.width,
        "intermediate_size": d.mlp_dim, "num_hidden_layers": d.depth,
        "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads, "head_dim": d.head_dim,
        "hidden_act": "silu", "max_position_embeddings": d.max_seq_len,
        "rms_norm_eps": d.norm_eps, "rope_theta": d.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": d.rope_theta},
        "tie_word_embeddings": bool(d.tie_embeddings), "attention_bias": False, "mlp_bias": False,
        "torch_dtype": "float32",
    }


def export_hf_decoder(params: Mapping, model_cfg: ml_collections.ConfigDict, out_dir: str,
                      tokenizer: Tokenizer | None = None) -> list[str]:
    """Writes `out_dir/model.safetensors` + `config.json` (transformers loads it) and, with the
    run's `tokenizer`, its files and `generation_config.json`. Returns the files written."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = hf_llama_tensors(params, model_cfg.decoder, model_cfg.moe)
    save_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, {"format": "pt"})
    config, files = hf_llama_config(model_cfg.decoder), ["model.safetensors", "config.json"]
    if tokenizer is not None:
        ids = hf_token_ids(tokenizer, config["vocab_size"])
        config.update(ids)
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(ids, f, indent=2)
        files += ["generation_config.json", *tokenizer.save_hf(out_dir)]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return files


def hf_token_ids(tok: Tokenizer, vocab_size: int) -> dict[str, int]:
    """The special ids transformers' config.json and generation_config.json carry: `generate`
    stops at `eos_token_id`, as our generation does at the tokenizer's end of text."""
    if tok.vocab_size > vocab_size:
        raise CheckpointError(f"the tokenizer {tok.path} has {tok.vocab_size} ids, the decoder "
                              f"{vocab_size} rows: it is not the tokenizer this decoder was "
                              "trained with; pass the run's (--tokenizer)")
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}


def export_mm1(params: Mapping, model_cfg: Mapping, path: str) -> None:
    """The whole MM1 model's parameters (nested, as in a TrainState) and its `config.model`
    (ConfigDict or dict) -> one safetensors file."""
    tensors = {k: np.asarray(v, np.float32) for k, v in flat(params, ".").items()}
    model = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    save_safetensors(path, tensors, {"format": "mm1_jax", "model": json.dumps(model)})


def load_mm1(path: str) -> tuple[dict, dict]:
    """(nested parameters with integer list indices, the `config.model` dict) from `export_mm1`."""
    reader = SafetensorsReader(path)
    params: dict = {}
    for name in reader.keys():
        node = params
        keys = [int(k) if k.isdigit() else k for k in name.split(".")]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        with reader.tensor(name) as t:
            node[keys[-1]] = np.array(t)
    return params, json.loads(reader.metadata["model"])

