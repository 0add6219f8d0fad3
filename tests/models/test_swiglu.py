"""`layers.swiglu`: its written-out backward against JAX's derived gradient of the same formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm1_jax.models import layers


def derived(x, wg, wu, wd):
    e = layers._SWIGLU[wg.ndim]
    h = jax.nn.silu(jnp.einsum(e["up"], x, wg)) * jnp.einsum(e["up"], x, wu)
    return jnp.einsum(e["down"], h, wd)


def inputs(x_shape, w_lead, m, h, dtype, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(k[0], (*x_shape, m))
    w = [jax.random.normal(k[i], (*w_lead, *shape)) / np.sqrt(shape[0])
         for i, shape in ((1, (m, h)), (2, (m, h)), (3, (h, m)))]
    dy = jax.random.normal(k[4], (*x_shape, m))
    return [a.astype(dtype) for a in (x, *w)], dy.astype(dtype)


@pytest.mark.parametrize("x_shape, w_lead", [((2, 7), ()), ((3, 5), (3,))], ids=["dense", "experts"])
def test_values_and_gradients_equal_the_derived_ones(x_shape, w_lead):
    args, dy = inputs(x_shape, w_lead, 16, 24, jnp.float32)
    y, vjp = jax.vjp(layers.swiglu, *args)
    y_ref, vjp_ref = jax.vjp(derived, *args)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(vjp(dy), vjp_ref(dy)):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


def test_bfloat16_stays_bfloat16_and_close_to_float32():
    args, dy = inputs((4, 9), (), 32, 48, jnp.bfloat16, seed=1)
    grads = jax.vjp(layers.swiglu, *args)[1](dy)
    want = jax.vjp(derived, *(a.astype(jnp.float32) for a in args))[1](dy.astype(jnp.float32))
    for got, ref in zip(grads, want):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=0.05,
                                   atol=0.02 * float(np.abs(ref).max()))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_gradients_under_remat(policy):
    """Under the decoder's remat policies, the rematerialised FFN gives the same gradients."""
    args, dy = inputs((2, 6), (), 8, 12, jnp.float32, seed=2)
    policies = {"full": jax.checkpoint_policies.nothing_saveable,
                "dots": jax.checkpoint_policies.checkpoint_dots,
                "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
    f = jax.checkpoint(layers.swiglu, policy=policies[policy])
    loss = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) * dy), argnums=(0, 1, 2, 3))(*args)
    for got, want in zip(jax.jit(lambda: loss(f))(), loss(derived)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
