"""Building blocks shared by the encoder, connector and decoder.

Every parameter is created with logical axis names (see `mm1_jax/sharding.py`); parameters are
stored in `param_dtype` (float32) and cast to the compute dtype (bf16 on accelerators) where used.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

Names = Sequence[str | None]

_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out"),
}


def dtypes(model_cfg: ml_collections.ConfigDict) -> tuple[jnp.dtype, jnp.dtype]:
    """(compute dtype, parameter dtype) from `cfg.model`."""
    return jnp.dtype(model_cfg.dtype), jnp.dtype(model_cfg.param_dtype)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of PyTorch's 1-D bicubic resize (`interpolate(mode="bicubic",
    align_corners=False)`, no antialias): Keys' cubic with a = -0.75, source index
    (i + 0.5) * n_in / n_out - 0.5, taps clamped at the border. timm and HF resize CLIP position
    embeddings with exactly this; `jax.image.resize` (a = -0.5, antialiased) differs by ~8% RMS."""
    a = -0.75

    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    taps = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)  # [n_out, 4]
    idx = np.clip(base[:, None].astype(int) + np.arange(-1, 3), 0, n_in - 1)
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.repeat(np.arange(n_out), 4), idx.ravel()), taps.ravel())
    return w.astype(np.float32)


def resize_pos_grid(grid: jax.Array, size: int) -> jax.Array:
    """Position embeddings of a square grid [g, g, d] -> [size, size, d], bicubic as PyTorch.
    Works on numpy (conversion) and traced arrays (a model run at another resolution)."""
    w = bicubic_matrix(grid.shape[0], size)
    xp = np if isinstance(grid, np.ndarray) else jnp
    return xp.einsum("yi,xj,ijd->yxd", w, w, grid.astype(np.float32)).astype(grid.dtype)


def resize_grid(pos: jax.Array, grid: int) -> jax.Array:
    """A learned position grid [g0 * g0, d] resized bicubically to [grid * grid, d] as PyTorch
    does (timm / HF resize CLIP position embeddings so), for images at another resolution than
    the one trained (SFT at 448..672 px). The encoder and the C-Abstractor resize theirs alike;
    the converters resize checkpoints with the same `resize_pos_grid`."""
    g0 = math.isqrt(pos.shape[0])
    if g0 * g0 != pos.shape[0]:
        raise ValueError(f"position embedding of {pos.shape[0]} rows is not a square grid")
    if grid == g0:
        return pos
    return resize_pos_grid(pos.reshape(g0, g0, -1), grid).reshape(grid * grid, -1)


def remat(fn, policy: str):
    """Wraps a block's forward in `nnx.remat` with the named policy ('none' leaves it alone)."""
    if policy == "none":
        return fn
    return nnx.remat(fn, policy=_POLICIES[policy], prevent_cse=False)


def param(rngs: nnx.Rngs, init, shape: Sequence[int], names: Names, dtype) -> nnx.Param:
    """A parameter initialised with `init(key, shape, dtype)` and tagged with logical names."""
    assert len(names) == len(shape), (names, shape)
    return tagged(init(rngs.params(), tuple(shape), dtype), names)


def tagged(value: jax.Array, names: Names) -> nnx.Param:
    """A parameter holding `value`, tagged with logical axis names only: the training code
    resolves them against a mesh (mm1_jax/sharding.py) and places the state with jit
    out_shardings. Eager sharding would instead demand a mesh at construction time, which
    tests, converters and `python -m mm1_jax.summary` do not have; it is off per parameter, so
    no process-wide switch is needed."""
    return nnx.Param(value, sharding_names=tuple(names), eager_sharding=False)


class Linear(nnx.Module):
    """y = x @ W (+ b) over the last axis; W: [in, out] with logical names `names`."""

    def __init__(self, d_in: int, d_out: int, names: Names, *, bias: bool, dtype, param_dtype,
                 rngs: nnx.Rngs, init=None):
        init = init or nnx.initializers.lecun_normal()
        self.dtype = dtype
        self.kernel = param(rngs, init, (d_in, d_out), names, param_dtype)
        self.bias = (param(rngs, nnx.initializers.zeros, (d_out,), names[-1:], param_dtype)
                     if bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in float32 (CLIP / Honeybee LayerNorm2d)."""

    def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs, name: str | None = "embed"):
        del rngs
        self.eps = eps
        self.scale = tagged(jnp.ones((dim,), param_dtype), (name,))
        self.bias = tagged(jnp.zeros((dim,), param_dtype), (name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm: x / rms(x) * w, computed in float32."""

    def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs, name: str | None = "embed"):
        del rngs
        self.eps = eps
        self.scale = tagged(jnp.ones((dim,), param_dtype), (name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch.nn.GELU() and HF 'gelu'."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu, "silu": jax.nn.silu}


# einsums of `swiglu` by the weights' rank: [m, h] (a dense FFN over any leading axes of x) or
# [e, m, h] (experts, x [e, rows, m]); m the model width, h the hidden width.
_SWIGLU = {
    2: {"up": "...m,mh->...h", "down": "...h,hm->...m", "dx": "...h,mh->...m",
        "dh": "...m,hm->...h", "dw_up": "...m,...h->mh", "dw_down": "...h,...m->hm"},
    3: {"up": "erm,emh->erh", "down": "erh,ehm->erm", "dx": "erh,emh->erm",
        "dh": "erm,ehm->erh", "dw_up": "erm,erh->emh", "dw_down": "erh,erm->ehm"},
}


@jax.custom_vjp
def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """Llama's FFN, (silu(x W_gate) * (x W_up)) W_down, with weights [m, h] / [h, m], or
    per expert [e, m, h] / [e, h, m] with x [e, rows, m]. Everything in x's dtype.

    Its backward is written out rather than derived: the SiLU derivative, dx and the three
    weight gradients from the saved x, x W_gate and x W_up, the elementwise part in float32.
    In the decoder's step XLA:CPU ran the derived backward with the hidden-width gradient
    transposed ([rows, h] -> [h, rows]) and the SiLU derivative fused into that transpose;
    alone this FFN is 0.99-1.13x as fast forward + backward (`benchmarks/swiglu.py`, four runs
    on a noisy machine), and the dense peer step went from 5.49 s to 4.61 s (two separate
    runs; BENCHMARKS.md). Same values as the derived gradient (tested)."""
    return _swiglu_fwd(x, w_gate, w_up, w_down)[0]


def _swiglu_fwd(x, w_gate, w_up, w_down):
    e = _SWIGLU[w_gate.ndim]
    g, u = jnp.einsum(e["up"], x, w_gate), jnp.einsum(e["up"], x, w_up)
    return jnp.einsum(e["down"], jax.nn.silu(g) * u, w_down), (x, g, u, w_gate, w_up, w_down)


def _swiglu_bwd(res, dy):
    x, g, u, w_gate, w_up, w_down = res
    e = _SWIGLU[w_gate.ndim]
    gf, uf = g.astype(jnp.float32), u.astype(jnp.float32)
    sig = jax.nn.sigmoid(gf)
    silu = gf * sig
    dh = jnp.einsum(e["dh"], dy, w_down).astype(jnp.float32)
    dg = (dh * uf * (sig * (1 + gf * (1 - sig)))).astype(x.dtype)  # d silu(g) / dg
    du = (dh * silu).astype(x.dtype)
    dx = jnp.einsum(e["dx"], dg, w_gate) + jnp.einsum(e["dx"], du, w_up)
    return (dx, jnp.einsum(e["dw_up"], x, dg), jnp.einsum(e["dw_up"], x, du),
            jnp.einsum(e["dw_down"], (silu * uf).astype(x.dtype), dy))


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
