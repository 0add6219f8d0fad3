"""Decoders through the command: Llama (sharded safetensors + index), Mistral, Qwen2 (q/k/v
biases) and Mixtral (top-2 MoE, dropless), compared with the PyTorch model's logits on the same
tokens; vocabulary growth and padding; dense -> MoE upcycling; unsupported features named."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import jax.numpy as jnp

from mm1_jax.config import ConfigError, base_config
from mm1_jax.convert.__main__ import main
from mm1_jax.convert.init_from import check_architecture
from tests.convert.helpers import load_converted, restored, save_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V, W, DEPTH, HEADS, KV, HEAD_DIM, MLP = 97, 64, 2, 4, 2, 16, 112
COMMON = dict(vocab_size=V, hidden_size=W, intermediate_size=MLP, num_hidden_layers=DEPTH,
              num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
              rms_norm_eps=1e-5)


def hf_model(arch: str, **overrides):
    torch.manual_seed(0)
    kw = {**COMMON, **overrides}
    if arch == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(rope_theta=500.0, **kw)).eval()
    if arch == "mistral":
        kw.setdefault("sliding_window", None)
        return transformers.MistralForCausalLM(transformers.MistralConfig(**kw)).eval()
    if arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw)).eval()
        with torch.no_grad():  # HF initialises biases to 0; make them matter
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
        return model
    if arch == "mixtral":
        return transformers.MixtralForCausalLM(transformers.MixtralConfig(
            num_local_experts=4, num_experts_per_tok=2, **kw)).eval()
    raise ValueError(arch)


def tokens():
    return np.random.default_rng(0).integers(0, V, (2, 12))


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens())).logits.numpy()


def _inputs(dec):
    t = tokens()
    return (dec.embed_tokens(jnp.asarray(t)), jnp.asarray(np.tile(np.arange(t.shape[1]), (2, 1))),
            jnp.ones(t.shape, jnp.int32))


def our_logits(dec, train: bool = False) -> np.ndarray:
    logits, _ = dec(*_inputs(dec), train=train)
    return np.asarray(logits)


def hf_hidden(model) -> np.ndarray:
    """The last hidden states (after the final norm), which the LM head projects."""
    with torch.no_grad():
        return model(torch.from_numpy(tokens()), output_hidden_states=True).hidden_states[-1].numpy()


def convert(tmp_path, model, *flags, shard=False):
    src = str(tmp_path / "hf")
    model.save_pretrained(src, max_shard_size="40KB" if shard else "10GB")
    out = str(tmp_path / "ours")
    main(["decoder", "--src", src, "--out", out, *flags])
    return src, out


def base():
    cfg = base_config()
    cfg.model.moe.mode = "dropless"  # Mixtral drops nothing; neither may we
    return cfg


@pytest.mark.parametrize("arch,overrides,shard", [
    ("llama", {}, True),
    ("llama", {"tie_word_embeddings": True}, False),
    ("mistral", {"rope_theta": 1e4}, False),
    ("qwen2", {}, False),
    ("mixtral", {}, False),
])
def test_matches_pytorch(tmp_path, arch, overrides, shard):
    model = hf_model(arch, **overrides)
    src, out = convert(tmp_path, model, shard=shard)
    if shard:
        assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    dec, cfg = load_converted(out, "decoder", base())
    assert cfg.model.decoder.attn_bias == (arch == "qwen2")
    assert cfg.model.moe.num_experts == (4 if arch == "mixtral" else 0)
    got, want = our_logits(dec), hf_logits(model)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    hidden = np.asarray(dec.hidden_states(*_inputs(dec)))
    assert np.abs(hidden - hf_hidden(model)).max() <= 1e-4


def test_mixtral_on_the_capacity_path_with_room_for_every_token(tmp_path):
    """The GShard path agrees too when capacity drops nothing (factor = number of experts)."""
    model = hf_model("mixtral")
    _, out = convert(tmp_path, model)
    cfg = base()
    cfg.model.moe.mode, cfg.model.moe.capacity_factor = "capacity", 4.0  # 4 experts: no drops
    dec, _ = load_converted(out, "decoder", cfg)
    # train=True: the capacity path (inference always routes dropless)
    assert np.abs(our_logits(dec, train=True) - hf_logits(model)).max() <= 1e-4


def test_the_command_line(tmp_path):
    """`python -m mm1_jax.convert decoder ...` in its own process, as a user runs it."""
    model = hf_model("llama")
    src = save_hf(model, str(tmp_path / "hf"))
    out = str(tmp_path / "ours")
    subprocess.run([sys.executable, "-m", "mm1_jax.convert", "decoder", "--src", src, "--out", out],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": ROOT})
    dec, _ = load_converted(out, "decoder", base())
    assert np.abs(our_logits(dec) - hf_logits(model)).max() <= 1e-4


def test_vocab_grows_with_mean_rows_and_pads_to_128(tmp_path):
    model = hf_model("llama")
    src, out = convert(tmp_path, model, "--vocab_size", str(V + 4), "--pad_vocab_multiple", "128")
    dec, cfg = load_converted(out, "decoder", base())
    d = cfg.model.decoder
    assert (d.vocab_size, d.real_vocab_size) == (128, V + 4)
    embed = restored(out, "decoder")[("embed",)]
    hf_embed = model.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(embed[:V], hf_embed)
    np.testing.assert_allclose(embed[V:V + 4], np.tile(hf_embed.mean(0), (4, 1)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(embed[V + 4:], 0)
    got = our_logits(dec)
    assert np.abs(got[..., :V] - hf_logits(model)).max() <= 1e-4  # old tokens: unchanged
    assert (got[..., V + 4:] == np.finfo(np.float32).min).all()  # padding rows: never predicted
    assert (got[..., V:V + 4] > -1e4).all()  # new tokens: real logits

    # A run whose tokenizer outgrew the checkpoint (32,000 + 4 in the Llama case) is told how
    # to convert again.
    run = base()
    run.model.decoder.update({k: v for k, v in d.items() if k in ("width", "depth", "heads",
                              "kv_heads", "head_dim", "mlp_dim", "rope_theta", "norm_eps")})
    run.model.decoder.vocab_size = 256
    with pytest.raises(ConfigError, match=r"vocab_size: config 256, checkpoint 128.*--vocab_size"):
        check_architecture(run, "decoder", out)


def test_dense_upcycled_to_moe_computes_the_dense_function(tmp_path):
    """Every expert a copy of the dense FFN: the renormalised top-2 gates sum to 1, so whatever
    the fresh router picks, the MoE decoder computes the dense model's logits."""
    model = hf_model("llama")
    src, out = convert(tmp_path, model, "--upcycle_experts", "4", "--upcycle_every", "2")
    dec, cfg = load_converted(out, "decoder", base())
    assert (cfg.model.moe.num_experts, cfg.model.moe.every) == (4, 2)
    params = restored(out, "decoder")
    wi = params[("periods", "blocks", 1, "ffn", "wi_0")]  # [periods, experts, d, f]
    np.testing.assert_array_equal(wi[0, 3], model.model.layers[1].mlp.gate_proj.weight.detach().numpy().T)
    assert np.abs(our_logits(dec) - hf_logits(model)).max() <= 1e-4


@pytest.mark.parametrize("arch,overrides,flags,named", [
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, [], "rope_scaling"),
    ("llama", {"attention_bias": True}, [], "attention_bias"),
    ("mistral", {"sliding_window": 16}, [], "sliding_window"),
])
def test_unsupported_features_fail_naming_them(tmp_path, arch, overrides, flags, named):
    model = hf_model(arch, **overrides)
    src = save_hf(model, str(tmp_path / "hf"))
    cfg = json.load(open(tmp_path / "hf" / "config.json"))
    if "rope_scaling" in overrides:  # transformers 5 stores it as rope_parameters
        assert cfg.get("rope_parameters", cfg.get("rope_scaling"))["rope_type"] == "linear"
    with pytest.raises(ValueError, match=named):
        main(["decoder", "--src", src, "--out", str(tmp_path / "ours"), *flags])


def test_a_window_longer_than_every_sequence_converts(tmp_path):
    model = hf_model("mistral", sliding_window=16)
    src, out = convert(tmp_path, model, "--max_seq_len", "16")
    dec, _ = load_converted(out, "decoder", base())
    assert np.abs(our_logits(dec) - hf_logits(model)).max() <= 1e-4  # 12 tokens < window


def test_bfloat16_checkpoint_reads_exactly(tmp_path):
    """Real checkpoints are bf16: read through ml_dtypes, every weight arrives bit-exact in f32."""
    model = hf_model("llama").to(torch.bfloat16)
    src, out = convert(tmp_path, model)
    assert '"BF16"' in open(f"{src}/model.safetensors", "rb").read(4096).decode("latin-1")
    params = restored(out, "decoder")
    embed = model.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(params[("embed",)], embed)
    down = model.model.layers[1].mlp.down_proj.weight.detach().float().numpy()
    np.testing.assert_array_equal(params[("periods", "blocks", 0, "ffn", "down", "kernel")][1], down.T)
