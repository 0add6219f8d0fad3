"""The decoder equals HF LlamaForCausalLM with converted weights, and packing is exact."""

import numpy as np
import pytest
import jax.numpy as jnp
from flax import nnx

from mm1_jax.config import base_config, validate
from mm1_jax.convert.common import load_params
from mm1_jax.convert.llama import llama_params
from tests.models import build

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _cfg(tie=False):
    cfg = base_config()
    d = cfg.model.decoder
    d.vocab_size, d.width, d.depth, d.heads, d.kv_heads, d.head_dim, d.mlp_dim = 97, 64, 3, 4, 2, 16, 112
    d.rope_theta, d.tie_embeddings = 500.0, tie
    cfg.model.dtype = "float32"
    return validate(cfg)


def _run(dec, tokens, positions, segment_ids):
    logits, _ = dec(dec.embed_tokens(jnp.asarray(tokens)), jnp.asarray(positions), jnp.asarray(segment_ids))
    return np.asarray(logits)


@pytest.mark.parametrize("tie", [False, True])
def test_matches_hf_llama_with_gqa(tie):
    cfg = _cfg(tie)
    d = cfg.model.decoder
    hf_cfg = transformers.LlamaConfig(vocab_size=d.vocab_size, hidden_size=d.width, intermediate_size=d.mlp_dim,
                                      num_hidden_layers=d.depth, num_attention_heads=d.heads,
                                      num_key_value_heads=d.kv_heads, head_dim=d.head_dim, rope_theta=d.rope_theta,
                                      rms_norm_eps=d.norm_eps, tie_word_embeddings=tie)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(hf_cfg).eval()
    dec = build.decoder(cfg, rngs=nnx.Rngs(0))
    load_params(dec, llama_params({k: v.numpy() for k, v in ref.state_dict().items()}, cfg))

    tokens = np.random.default_rng(0).integers(0, d.vocab_size, (2, 12))
    with torch.no_grad():
        want = ref(torch.from_numpy(tokens)).logits.numpy()
    got = _run(dec, tokens, np.tile(np.arange(12), (2, 1)), np.ones((2, 12), np.int32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_packed_documents_equal_separate_runs():
    cfg = _cfg()
    dec = build.decoder(cfg, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 97, 7), rng.integers(0, 97, 5)
    packed = np.concatenate([a, b, np.zeros(4, int)])[None]  # 7 + 5 tokens + 4 padding
    positions = np.concatenate([np.arange(7), np.arange(5), np.zeros(4, int)])[None]
    segments = np.array([[1] * 7 + [2] * 5 + [0] * 4])
    got = _run(dec, packed, positions, segments)[0]
    alone_a = _run(dec, a[None], np.arange(7)[None], np.ones((1, 7), int))[0]
    alone_b = _run(dec, b[None], np.arange(5)[None], np.ones((1, 5), int))[0]
    np.testing.assert_allclose(got[:7], alone_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[7:12], alone_b, rtol=1e-5, atol=1e-5)
    # Without segment ids the second document would see the first: the test can fail.
    leaky = _run(dec, packed, positions, np.ones_like(segments))[0]
    assert np.abs(leaky[7:12] - alone_b).max() > 1e-3
