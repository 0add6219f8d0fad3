"""Llama-family HF checkpoints -> mm1_jax.models.decoder.Decoder.

`LlamaForCausalLM`, `MistralForCausalLM` and `Qwen2ForCausalLM` (q/k/v biases:
`decoder.attn_bias`) load onto the dense decoder, `MixtralForCausalLM` onto the MoE decoder with
an MoE FFN in every layer (`moe.every = 1`; Mixtral's top-2 router with renormalised gates is
ours). Optionally a dense checkpoint is *upcycled* (Komatsuzaki et al. 2022, "Sparse Upcycling"):
every expert of a sparse layer starts as a copy of that layer's dense FFN and the router starts
fresh. MM1 does not report doing this; it is offered as an option.

HF stores q/k projections already permuted for the half-rotation RoPE layout our `rope` uses, so
no re-permutation is needed. The architecture is read from the checkpoint's `config.json`; a
feature our decoder does not implement fails, naming the config key.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np

from mm1_jax.config import expert_mlp_dim
from mm1_jax.convert.stream import DictReader, Leaf, Reader, materialize
from mm1_jax.errors import CheckpointError

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM")
_IGNORED = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


def decoder_arch(config: dict, *, max_seq_len: int | None = None) -> tuple[dict, dict]:
    """HF `config.json` -> (fields of `config.model.decoder`, fields of `config.model.moe`).

    max_seq_len: the longest sequence the run will use; a sliding window at least this long
    never binds, so such a checkpoint converts (Mistral-7B-v0.1 declares a 4096 window).
    """
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"config.json: architecture {arch!r} is not supported; "
                              f"supported: {ARCHITECTURES}")

    def unsupported(key, value, why):
        raise CheckpointError(f"config.json: {key}={value!r} is not supported by mm1_jax's decoder ({why})")

    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        unsupported("rope_scaling", rope, "only plain RoPE is implemented")
    theta = config.get("rope_theta", rope.get("rope_theta", 10_000.0))
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        unsupported("partial_rotary_factor", config["partial_rotary_factor"], "RoPE on every dim")
    if config.get("hidden_act", "silu") != "silu":
        unsupported("hidden_act", config["hidden_act"], "SwiGLU with SiLU only")
    if config.get("mlp_bias"):
        unsupported("mlp_bias", True, "FFNs have no biases")
    if arch != "Qwen2ForCausalLM" and config.get("attention_bias"):
        unsupported("attention_bias", True, "o_proj has no bias")
    window = config.get("sliding_window")
    windowed = (config.get("use_sliding_window", False) if arch == "Qwen2ForCausalLM"
                else window is not None)
    windowed |= "sliding_attention" in (config.get("layer_types") or [])
    if windowed and (max_seq_len is None or max_seq_len > window):
        unsupported("sliding_window", window, "full causal attention only; pass --max_seq_len <= "
                    "the window if the run's sequences never exceed it")

    heads = config["num_attention_heads"]
    decoder = {
        "vocab_size": config["vocab_size"], "real_vocab_size": None,
        "width": config["hidden_size"], "depth": config["num_hidden_layers"], "heads": heads,
        "kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "mlp_dim": config["intermediate_size"], "rope_theta": float(theta),
        "norm_eps": config.get("rms_norm_eps", 1e-6),
        "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
        "attn_bias": arch == "Qwen2ForCausalLM",
    }
    moe = {"num_experts": 0}
    if arch == "MixtralForCausalLM":
        moe = {"num_experts": config["num_local_experts"], "top_k": config["num_experts_per_tok"],
               "every": 1, "expert_mlp_dim": config["intermediate_size"]}
    return decoder, moe


def extend_vocab(decoder: dict, vocab_size: int | None = None, pad_multiple: int = 1) -> dict:
    """Decoder fields for `vocab_size` real tokens (>= the checkpoint's: new rows are appended)
    padded to a multiple of `pad_multiple` (padding rows: logits masked, `real_vocab_size`)."""
    src = decoder["real_vocab_size"] or decoder["vocab_size"]
    real = src if vocab_size is None else vocab_size
    if real < src:
        raise CheckpointError(f"--vocab_size {real} is smaller than the checkpoint's {src} tokens")
    padded = -(-real // pad_multiple) * pad_multiple
    return {**decoder, "vocab_size": padded, "real_vocab_size": real if padded > real else None}


def _vocab_rows(src_rows: int, real: int, padded: int):
    """[src, w] -> [padded, w]: rows src..real-1 (new tokens) start at the mean embedding (a new
    token then begins as an average word, not noise); rows real.. (sharding padding) are 0."""

    def fn(t):
        t = np.asarray(t, np.float32)
        new = np.broadcast_to(t.mean(0), (real - src_rows, t.shape[1]))
        return np.concatenate([t, new, np.zeros((padded - real, t.shape[1]), np.float32)])

    return fn


def decoder_leaves(reader: Reader, cfg: ml_collections.ConfigDict, *, router_seed: int = 0) -> dict:
    """HF names -> {our Decoder path: Leaf} for `cfg.model.decoder` / `cfg.model.moe`.

    A dense checkpoint on an MoE config is upcycled: each sparse layer's experts copy its dense
    FFN and its router is drawn fresh (normal, std 1/sqrt(width), from `router_seed`).
    """
    d, m = cfg.model.decoder, cfg.model.moe
    sparse = bool(m.num_experts)
    every = m.every if sparse else 1
    periods = d.depth // every
    w, n, g, k = d.width, d.heads, d.kv_heads, d.head_dim
    name = lambda i, x: f"model.layers.{i}.{x}"  # noqa: E731
    mixtral = name(0, "block_sparse_moe.gate.weight") in reader
    if mixtral and not sparse:
        raise CheckpointError("a Mixtral checkpoint needs an MoE config (model.moe.num_experts > 0)")
    src_vocab = reader.shape("model.embed_tokens.weight")[0]
    real = d.real_vocab_size or d.vocab_size
    rows = _vocab_rows(src_vocab, real, d.vocab_size)
    out = {("embed",): Leaf((d.vocab_size, w), "model.embed_tokens.weight", rows),
           ("final_norm", "scale"): Leaf((w,), "model.norm.weight")}
    if not d.tie_embeddings:
        out[("lm_head", "kernel")] = Leaf((w, d.vocab_size), "lm_head.weight", lambda t: rows(t).T)
    T = lambda t: np.asarray(t).T  # noqa: E731  torch Linear [out, in] -> our kernel [in, out]
    for j in range(every):
        L = [p * every + j for p in range(periods)]
        blk = ("periods", "blocks", j)
        per = lambda x: [name(i, x) for i in L]  # noqa: E731
        out[blk + ("attn", "wq")] = Leaf((periods, w, n, k), per("self_attn.q_proj.weight"),
                                         lambda t: T(t).reshape(w, n, k))
        out[blk + ("attn", "wk")] = Leaf((periods, w, g, k), per("self_attn.k_proj.weight"),
                                         lambda t: T(t).reshape(w, g, k))
        out[blk + ("attn", "wv")] = Leaf((periods, w, g, k), per("self_attn.v_proj.weight"),
                                         lambda t: T(t).reshape(w, g, k))
        out[blk + ("attn", "wo")] = Leaf((periods, n, k, w), per("self_attn.o_proj.weight"),
                                         lambda t: T(t).reshape(n, k, w))
        if d.attn_bias:
            for ours, theirs, h in (("bq", "q", n), ("bk", "k", g), ("bv", "v", g)):
                out[blk + ("attn", ours)] = Leaf((periods, h, k), per(f"self_attn.{theirs}_proj.bias"),
                                                 lambda t, h=h: np.asarray(t).reshape(h, k))
        out[blk + ("attn_norm", "scale")] = Leaf((periods, w), per("input_layernorm.weight"))
        out[blk + ("ffn_norm", "scale")] = Leaf((periods, w), per("post_attention_layernorm.weight"))
        if sparse and j == every - 1:
            e, f = m.num_experts, expert_mlp_dim(cfg.model.decoder, cfg.model.moe)
            if mixtral:
                ex = lambda x: [[name(i, f"block_sparse_moe.experts.{c}.{x}.weight")  # noqa: E731
                                 for c in range(e)] for i in L]
                out[blk + ("ffn", "router")] = Leaf((periods, w, e), per("block_sparse_moe.gate.weight"), T)
                wi_0, wi_1, wo = ex("w1"), ex("w3"), ex("w2")
            else:  # sparse upcycling of a dense FFN
                ex = lambda x: [[name(i, f"mlp.{x}.weight")] * e for i in L]  # noqa: E731
                rng = np.random.default_rng(router_seed)
                router = rng.normal(0.0, w**-0.5, (periods, w, e)).astype(np.float32)
                out[blk + ("ffn", "router")] = Leaf((periods, w, e), None, lambda _: router)
                wi_0, wi_1, wo = ex("gate_proj"), ex("up_proj"), ex("down_proj")
            out[blk + ("ffn", "wi_0")] = Leaf((periods, e, w, f), wi_0, T)
            out[blk + ("ffn", "wi_1")] = Leaf((periods, e, w, f), wi_1, T)
            out[blk + ("ffn", "wo")] = Leaf((periods, e, f, w), wo, T)
        else:
            f = d.mlp_dim
            for ours, theirs, shape in (("gate", "gate_proj", (w, f)), ("up", "up_proj", (w, f)),
                                        ("down", "down_proj", (f, w))):
                out[blk + ("ffn", ours, "kernel")] = Leaf((periods, *shape), per(f"mlp.{theirs}.weight"), T)
    # A tied checkpoint may still carry lm_head.weight (a copy of the embedding).
    _check_all_used(reader, out, ("lm_head.weight",) if d.tie_embeddings else ())
    return out


def _names(sources) -> set[str]:
    if sources is None:
        return set()
    if isinstance(sources, str):
        return {sources}
    return set().union(*(_names(s) for s in sources))


def _check_all_used(reader: Reader, leaves: Mapping, ignored: tuple[str, ...]) -> None:
    """A tensor nobody reads is a feature the decoder lacks (o_proj bias, ...): fail naming it."""
    used = set(ignored).union(*(_names(leaf.sources) for leaf in leaves.values()))
    left = sorted(k for k in reader.keys() if k not in used and not k.endswith(_IGNORED))
    if left:
        raise CheckpointError(f"checkpoint tensors with no place in mm1_jax's decoder: {left[:8]}"
                              f"{' ...' if len(left) > 8 else ''}")


def llama_params(sd: Mapping[str, np.ndarray], cfg: ml_collections.ConfigDict) -> dict:
    """An in-memory HF state dict -> {path: float32 array} (load with `common.load_params`)."""
    reader = DictReader(sd)
    return materialize(decoder_leaves(reader, cfg), reader)
