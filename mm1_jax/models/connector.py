"""Vision-language connectors: patch features [n, p, v] -> image tokens [n, t, d] (MM1 sec. 3.2).

Three kinds, chosen by `cfg.model.connector.kind`:
- `c_abstractor` (MM1 final): Honeybee's C-Abstractor. Layout and parameter shapes follow
  kakaobrain/honeybee `CAbstractor` built on timm's `RegStage`/`Bottleneck`, so Honeybee
  checkpoints load through `mm1_jax/convert/honeybee.py`.
- `avg_pool`: n x n adaptive average pooling of the patch grid, then a linear projection.
- `attn_pool`: t learnable queries cross-attending to the patches, then a linear projection.

Patches are row-major over the g x g grid (p = g*g, CLS already dropped), as in Honeybee's
`rearrange("b (h w) d -> b d h w")`; activations here are NHWC instead of NCHW.

Legend: n images, p patches, g grid side, h/w rows/cols (i/j after pooling), v vision width,
c connector channels, r squeeze-excite width, t tokens, d decoder width, a heads, k head dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mm1_jax.models import layers
from mm1_jax.sharding import constrain

# Activations are [n, ...] with n = images, split over the batch's mesh axes (see vision.py).
_TOKENS = ("batch", None, None)  # [n, p or t, c]
_GRID = ("batch", None, None, None)  # [n, h, w, c]

# Honeybee's PreTrainedModel init: N(0, 0.02) for conv/linear weights and the position embedding.
_INIT = nnx.initializers.normal(0.02)
# timm turns Honeybee's `norm_layer=LayerNorm2d` into LayerNormAct2d, whose eps is 1e-5
# (not LayerNorm2d's own 1e-6).
_NORM_EPS = 1e-5


# ------------------------------------------------------------------------- adaptive pooling


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] row-stochastic matrix of torch AdaptiveAvgPool windows along one axis.

    Output cell i averages inputs floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1; when n_out
    does not divide n_in the windows differ in size and overlap (27 -> 12: sizes 3 and 4).
    """
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo = (i * n_in) // n_out
        hi = -((-(i + 1) * n_in) // n_out)  # ceil without floats
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool2d(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """torch.nn.AdaptiveAvgPool2d on NHWC: x [n, h, w, c] -> [n, oh, ow, c].

    Separable: one averaging matrix per axis, built with numpy from the static shapes at trace
    time, so it jits to two small matmuls. Accumulates in float32 (bf16 cannot hold 1/3 exactly)
    and returns x.dtype.
    """
    _, h, w, _ = x.shape
    mh = jnp.asarray(_pool_matrix(h, out_hw[0]))
    mw = jnp.asarray(_pool_matrix(w, out_hw[1]))
    y = jnp.einsum("ih,nhwc,jw->nijc", mh, x.astype(jnp.float32), mw,
                   precision=jax.lax.Precision.HIGHEST)
    return y.astype(x.dtype)


# ------------------------------------------------------------------------- RegNet pieces


class Conv2d(nnx.Module):
    """Stride-1 'same' conv in NHWC; kernel [kh, kw, c_in // groups, c_out] (HWIO)."""

    def __init__(self, c_in: int, c_out: int, size: int, *, groups: int = 1, bias: bool,
                 dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype, self.groups, self.pad = dtype, groups, size // 2
        self.kernel = layers.param(rngs, _INIT, (size, size, c_in // groups, c_out),
                                   (None, None, None, "conv"), param_dtype)
        self.bias = (layers.param(rngs, nnx.initializers.zeros, (c_out,), ("conv",), param_dtype)
                     if bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:  # [n, h, w, c_in] -> [n, h, w, c_out]
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), window_strides=(1, 1),
            padding=((self.pad, self.pad), (self.pad, self.pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class ConvNorm(nnx.Module):
    """timm ConvNormAct with Honeybee's settings: bias-free conv, channel LayerNorm, opt. SiLU."""

    def __init__(self, c_in: int, c_out: int, size: int, *, groups: int = 1, act: bool,
                 dtype, param_dtype, rngs: nnx.Rngs):
        self.act = act
        self.conv = Conv2d(c_in, c_out, size, groups=groups, bias=False, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)
        self.norm = layers.LayerNorm(c_out, eps=_NORM_EPS, param_dtype=param_dtype, rngs=rngs,
                                     name="conv")

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm(self.conv(x))
        return jax.nn.silu(y) if self.act else y


class SqueezeExcite(nnx.Module):
    """timm SEModule: x * sigmoid(fc2(silu(fc1(mean_hw(x))))); fc1/fc2 are biased 1x1 convs."""

    def __init__(self, c: int, r: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        lin = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs, init=_INIT)
        self.fc1 = layers.Linear(c, r, ("conv", None), **lin)
        self.fc2 = layers.Linear(r, c, (None, "conv"), **lin)

    def __call__(self, x: jax.Array) -> jax.Array:  # [n, h, w, c]
        s = x.mean(axis=(1, 2), keepdims=True)
        return x * jax.nn.sigmoid(self.fc2(jax.nn.silu(self.fc1(s))))


def se_width(c_in: int, se_ratio: float) -> int:
    """SE width of a timm RegNet Bottleneck: from the block's *input* width, Python's round."""
    return int(round(c_in * se_ratio))


class Bottleneck(nnx.Module):
    """timm RegNet Bottleneck as Honeybee builds it (bottle_ratio 1, group_size 1 = depthwise).

    conv1 1x1 -> LN -> SiLU; conv2 depthwise 3x3 -> LN -> SiLU; SE; conv3 1x1 -> LN;
    + shortcut (1x1 conv + LN when the width changes, else identity); SiLU.
    """

    def __init__(self, c_in: int, c_out: int, se_ratio: float, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = ConvNorm(c_in, c_out, 1, act=True, **kw)
        self.conv2 = ConvNorm(c_out, c_out, 3, groups=c_out, act=True, **kw)
        self.se = SqueezeExcite(c_out, se_width(c_in, se_ratio), **kw) if se_ratio else None
        self.conv3 = ConvNorm(c_out, c_out, 1, act=False, **kw)
        self.shortcut = ConvNorm(c_in, c_out, 1, act=False, **kw) if c_in != c_out else None

    def __call__(self, x: jax.Array) -> jax.Array:  # [n, h, w, c_in] -> [n, h, w, c_out]
        y = self.conv2(self.conv1(x))
        if self.se is not None:
            y = self.se(y)
        y = self.conv3(y)
        skip = self.shortcut(x) if self.shortcut is not None else x.astype(y.dtype)
        return jax.nn.silu(y + skip)


class RegStage(nnx.Module):
    """`depth` Bottlenecks; only the first changes the width (timm RegStage, stride 1)."""

    def __init__(self, depth: int, c_in: int, c_out: int, se_ratio: float, *, dtype,
                 param_dtype, rngs: nnx.Rngs):
        self.blocks = nnx.List([
            Bottleneck(c_in if i == 0 else c_out, c_out, se_ratio, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
            for i in range(depth)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = constrain(block(x), _GRID)
        return x


# ------------------------------------------------------------------------- connectors


def _side(num_tokens: int) -> int:
    """Tokens per side of the pooled grid (config.validate requires a square count)."""
    return math.isqrt(num_tokens)


def _grid(x: jax.Array) -> jax.Array:
    """[n, p, c] -> [n, g, g, c] (row-major patches)."""
    n, p, c = x.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"connector input has {p} patches, not a square grid; pass the patch "
                         "features without the CLS token")
    return x.reshape(n, g, g, c)


class CAbstractor(nnx.Module):
    """Honeybee C-Abstractor: x [n, p, v] -> [n, t, d].

    x + pos_emb -> g x g grid -> stage1 (depth Bottlenecks, v -> c) -> adaptive avg pool to
    sqrt(t) x sqrt(t) -> stage2 (depth Bottlenecks, c -> c) -> readout MLP
    (Linear(c, d), then (SiLU, Linear(d, d)) x (mlp_depth - 1)). With depth 0 both stages vanish
    and the readout reads the pooled v-wide features, as in Honeybee.
    """

    def __init__(self, k: ml_collections.ConfigDict, *, vision_width: int, vision_grid: int,
                 width: int, dtype, param_dtype, rngs: nnx.Rngs):
        dt, pdt = dtype, param_dtype
        v, c, d = vision_width, k.hidden, width
        self.dtype, self.side = dt, _side(k.num_tokens)
        self.pos_emb = layers.param(rngs, _INIT, (vision_grid ** 2, v), (None, "conv"), pdt)
        kw = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        self.stage1 = RegStage(k.depth, v, c, k.se_ratio, **kw) if k.depth else None
        self.stage2 = RegStage(k.depth, c, c, k.se_ratio, **kw) if k.depth else None
        width = c if k.depth else v
        lin = dict(bias=True, init=_INIT, **kw)
        self.readout = nnx.List(
            [layers.Linear(width, d, ("conv", "embed"), **lin)]
            + [layers.Linear(d, d, ("embed", "embed"), **lin) for _ in range(k.mlp_depth - 1)])

    def position_embedding(self, grid: int) -> jax.Array:
        """[grid*grid, v]: the learned grid, bicubically resized for other resolutions.

        Resized like the encoder's own position embedding (mm1_jax/models/vision.py), so the
        higher-resolution SFT images (448..672 px) pass through encoder and connector alike.
        """
        return layers.resize_grid(self.pos_emb[...], grid)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _grid(constrain(x.astype(self.dtype), _TOKENS))
        y = y + self.position_embedding(y.shape[1]).astype(self.dtype).reshape(y.shape[1:])
        y = constrain(y, _GRID)
        if self.stage1 is not None:
            y = self.stage1(y)
        y = constrain(adaptive_avg_pool2d(y, (self.side, self.side)), _GRID)
        if self.stage2 is not None:
            y = self.stage2(y)
        y = y.reshape(y.shape[0], -1, y.shape[-1])
        y = self.readout[0](y)
        for lin in self.readout[1:]:
            y = lin(jax.nn.silu(y))
        return constrain(y, _TOKENS)


class AvgPoolConnector(nnx.Module):
    """MM1's average-pooling ablation: x [n, p, v] -> adaptive n x n avg pool -> Linear(v, d)."""

    def __init__(self, k: ml_collections.ConfigDict, *, vision_width: int, vision_grid: int,
                 width: int, dtype, param_dtype, rngs: nnx.Rngs):
        del vision_grid
        self.side = _side(k.num_tokens)
        self.proj = layers.Linear(vision_width, width, ("conv", "embed"), bias=True, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs, init=_INIT)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = adaptive_avg_pool2d(_grid(constrain(x, _TOKENS)), (self.side, self.side))
        return constrain(self.proj(y.reshape(y.shape[0], -1, y.shape[-1])), _TOKENS)


class AttnPoolConnector(nnx.Module):
    """MM1's attention-pooling ablation: t learnable queries attend over the patches.

    Layout (Qwen-VL-resampler style, c = connector.hidden, a = attn_heads, k = c / a):
      kv    = ln_kv(x @ kv_proj)                      [n, p, c]   kv_proj [v, c], no bias
      q     = ln_q(queries)                           [t, c]      queries [t, c]
      attn  = MHA(q, kv, kv): q/k/v kernels [c, a, k] with bias [c], softmax in float32,
              scale 1/sqrt(k), out kernel [a, k, c] with bias [c]   (= torch MultiheadAttention)
      y     = ln_post(attn) @ proj + b                [n, t, d]   proj [c, d]
    No position embedding: the CLIP features already carry their position.
    """

    def __init__(self, kc: ml_collections.ConfigDict, *, vision_width: int, vision_grid: int,
                 width: int, dtype, param_dtype, rngs: nnx.Rngs):
        del vision_grid
        dt, pdt = dtype, param_dtype
        v, c, d, a = vision_width, kc.hidden, width, kc.attn_heads
        self.dtype, self.heads = dt, a
        hd = c // a
        ln = dict(eps=_NORM_EPS, param_dtype=pdt, rngs=rngs, name="conv")
        self.queries = layers.param(rngs, _INIT, (kc.num_tokens, c), (None, "conv"), pdt)
        self.kv_proj = layers.Linear(v, c, ("embed", "conv"), bias=False, dtype=dt,
                                     param_dtype=pdt, rngs=rngs, init=_INIT)
        self.ln_kv = layers.LayerNorm(c, **ln)
        self.ln_q = layers.LayerNorm(c, **ln)
        proj = lambda shape, names: layers.param(rngs, _INIT, shape, names, pdt)  # noqa: E731
        zero = nnx.initializers.zeros
        zeros = lambda shape, names: layers.param(rngs, zero, shape, names, pdt)  # noqa: E731
        self.wq, self.wk, self.wv = (proj((c, a, hd), ("conv", None, None)) for _ in range(3))
        # Biases are vectors, as torch's in_proj_bias slices (and as the optimiser's no-decay rule
        # expects of every bias); reshaped per head where used.
        self.bq, self.bk, self.bv = (zeros((c,), ("conv",)) for _ in range(3))
        self.wo = proj((a, hd, c), (None, None, "conv"))
        self.bo = zeros((c,), ("conv",))
        self.ln_post = layers.LayerNorm(c, **ln)
        self.proj = layers.Linear(c, d, ("conv", "embed"), bias=True, dtype=dt,
                                  param_dtype=pdt, rngs=rngs, init=_INIT)

    def __call__(self, x: jax.Array) -> jax.Array:  # [n, p, v] -> [n, t, d]
        dt = self.dtype
        cast = lambda p: p[...].astype(dt)  # noqa: E731
        kv = constrain(self.ln_kv(self.kv_proj(constrain(x, _TOKENS))), _TOKENS)
        q = self.ln_q(self.queries[...]).astype(dt)
        heads = lambda b: cast(b).reshape(self.heads, -1)  # noqa: E731
        q = jnp.einsum("tc,cak->tak", q, cast(self.wq)) + heads(self.bq)
        k = jnp.einsum("npc,cak->npak", kv, cast(self.wk)) + heads(self.bk)
        v = jnp.einsum("npc,cak->npak", kv, cast(self.wv)) + heads(self.bv)
        logits = jnp.einsum("tak,npak->natp", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits / math.sqrt(q.shape[-1]), axis=-1).astype(dt)
        o = jnp.einsum("natp,npak->ntak", probs, v)
        o = jnp.einsum("ntak,akc->ntc", o, cast(self.wo)) + cast(self.bo)
        return constrain(self.proj(self.ln_post(o)), _TOKENS)


_KINDS = {"c_abstractor": CAbstractor, "avg_pool": AvgPoolConnector, "attn_pool": AttnPoolConnector}


def build_connector(k: ml_collections.ConfigDict, *, vision_width: int, vision_grid: int,
                    width: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Module:
    """The connector named by `k.kind` (k = `cfg.model.connector`) from `vision_width`-wide
    features on a `vision_grid` x `vision_grid` patch grid to `width`-wide decoder tokens;
    __call__: [n, g*g, v] -> [n, t, d]."""
    if k.kind not in _KINDS:
        raise ValueError(f"config.model.connector.kind: unknown {k.kind!r}; choose one of "
                         f"{tuple(_KINDS)}")
    return _KINDS[k.kind](k, vision_width=vision_width, vision_grid=vision_grid, width=width,
                          dtype=dtype, param_dtype=param_dtype, rngs=rngs)
