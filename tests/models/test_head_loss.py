"""The fused, chunked LM head + cross-entropy (mm1_jax/models/head_loss.py) against full logits
and optax: values, per-token cross-entropy and gradients, for an untied and a tied (vocab-major)
head, a padded vocabulary, masked tokens and chunk counts that do and do not split the rows."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mm1_jax.models.head_loss import chunk_count, linear_cross_entropy

B, T, D, V, REAL = 2, 12, 8, 50, 41


def _data():
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (B, T, D))
    w = jax.random.normal(k[1], (D, V))
    targets = jax.random.randint(k[2], (B, T), 0, REAL)
    weights = (jax.random.uniform(k[3], (B, T)) > 0.3) / 7.0
    return x, w, targets, weights


def _reference(x, w, targets, weights, vocab_major):
    logits = jnp.einsum("btd,vd->btv", x, w) if vocab_major else x @ w
    logits = jnp.where(jnp.arange(V) < REAL, logits, jnp.finfo(jnp.float32).min)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (ce * weights).sum(), ce


@pytest.mark.parametrize("vocab_major", [False, True])
@pytest.mark.parametrize("chunks", [1, 3, 4])
def test_equals_full_logits_and_optax(vocab_major, chunks):
    x, w, targets, weights = _data()
    w = w.T if vocab_major else w

    def fused(x, w):
        return linear_cross_entropy(x, w, targets, weights, chunks=chunks, real_vocab=REAL,
                                    vocab_major=vocab_major)

    (loss, ce), grads = jax.jit(jax.value_and_grad(fused, (0, 1), has_aux=True))(x, w)
    (ref_loss, ref_ce), ref_grads = jax.value_and_grad(
        lambda x, w: _reference(x, w, targets, weights, vocab_major), (0, 1), has_aux=True)(x, w)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-6)
    # The padding rows of the vocabulary are never predicted: no gradient reaches them.
    pad = grads[1][REAL:] if vocab_major else grads[1][:, REAL:]
    assert not np.any(np.asarray(pad))


def test_scaled_cotangent_and_frozen_head():
    x, w, targets, weights = _data()
    # An outer factor scales both gradients; a head under stop_gradient gets none, x still does.
    gx, gw = jax.grad(lambda x, w: 3.0 * linear_cross_entropy(
        x, w, targets, weights, chunks=2, real_vocab=REAL)[0], (0, 1))(x, w)
    rx, rw = jax.grad(lambda x, w: 3.0 * _reference(x, w, targets, weights, False)[0], (0, 1))(x, w)
    np.testing.assert_allclose(gx, rx, atol=1e-6)
    np.testing.assert_allclose(gw, rw, atol=1e-6)
    gx_frozen = jax.grad(lambda x: linear_cross_entropy(
        x, jax.lax.stop_gradient(w), targets, weights, chunks=2, real_vocab=REAL)[0])(x)
    np.testing.assert_allclose(gx_frozen, rx / 3.0, atol=1e-6)


def test_per_token_cross_entropy_is_not_differentiable():
    x, w, targets, weights = _data()
    with pytest.raises(NotImplementedError, match="weighted loss"):
        jax.grad(lambda x: linear_cross_entropy(x, w, targets, weights, chunks=2)[1].sum())(x)
    with pytest.raises(ValueError, match="does not divide"):
        linear_cross_entropy(x, w, targets, weights, chunks=5)


def test_chunk_count_divides_the_rows():
    assert [chunk_count(4, t) for t in (4096, 12, 10, 7, 3)] == [4, 4, 2, 1, 3]
    assert chunk_count(0, 8) == 1
