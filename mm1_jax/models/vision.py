"""CLIP ViT image encoder (MM1 section 3.2: ViT-L/14-336 for ablations, ViT-H/14-378 final).

Layout follows OpenAI CLIP / HF CLIPVisionModel so their checkpoints load (mm1_jax/convert/clip.py):
patch conv without bias, CLS concatenated *before* the position embedding is added, `ln_pre`,
pre-LN blocks with biased q/k/v/o and a QuickGELU (or GELU) MLP. The connector reads the output
of block `feature_layer` (no final LayerNorm, as LLaVA/MM1 use hidden states, not the pooled CLS).

Legend: b images, p patches (+1 CLS), d width, h heads, k head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mm1_jax.config import vision_grid
from mm1_jax.models import layers


def normalize_images(images: jax.Array, mean, std) -> jax.Array:
    """uint8 pixels -> float32 (x / 255 - mean) / std (CLIP preprocessing); floats pass through.

    The data pipeline ships uint8 (4x fewer bytes host-to-device, no float pass on the host), so
    normalisation runs here, on the accelerator. Float inputs are taken as already normalised.
    """
    if images.dtype != jnp.uint8:
        return images
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) * (1.0 / 255.0) - mean) / std


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


def num_blocks_used(cfg: ml_collections.ConfigDict) -> int:
    """Blocks up to and including the feature layer; later blocks would be dead weight."""
    v = cfg.model.vision
    return v.feature_layer if v.feature_layer > 0 else v.depth + 1 + v.feature_layer


class VisionBlock(nnx.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        v = cfg.model.vision
        dt, pdt = layers.dtypes(cfg)
        self.heads = v.heads
        self.act = layers.ACTIVATIONS[v.act]
        lin = dict(bias=True, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.ln_1 = layers.LayerNorm(v.width, eps=v.norm_eps, param_dtype=pdt, rngs=rngs)
        self.q = layers.Linear(v.width, v.width, ("embed", "heads"), **lin)
        self.k = layers.Linear(v.width, v.width, ("embed", "heads"), **lin)
        self.v = layers.Linear(v.width, v.width, ("embed", "heads"), **lin)
        self.o = layers.Linear(v.width, v.width, ("heads", "embed"), **lin)
        self.ln_2 = layers.LayerNorm(v.width, eps=v.norm_eps, param_dtype=pdt, rngs=rngs)
        self.fc1 = layers.Linear(v.width, v.mlp_dim, ("embed", "mlp"), **lin)
        self.fc2 = layers.Linear(v.mlp_dim, v.width, ("mlp", "embed"), **lin)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: [b, p, d]
        b, p, d = x.shape
        split = lambda t: t.reshape(b, p, self.heads, d // self.heads)  # noqa: E731
        y = self.ln_1(x)
        attn = jax.nn.dot_product_attention(split(self.q(y)), split(self.k(y)), split(self.v(y)))
        x = x + self.o(attn.reshape(b, p, d))
        return x + self.fc2(self.act(self.fc1(self.ln_2(x))))


class VisionEncoder(nnx.Module):
    """images [b, H, W, 3] (uint8, or normalised floats) -> patch features [b, g*g, d] of the
    feature layer."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        v = cfg.model.vision
        dt, pdt = layers.dtypes(cfg)
        self.dtype, self.patch, self.grid = dt, v.patch_size, vision_grid(cfg)
        self.remat_policy = cfg.model.remat
        self.mean, self.std = tuple(v.mean), tuple(v.std)
        scale = v.width**-0.5  # CLIP's init scale for class / position embeddings
        normal = nnx.initializers.normal(scale)
        # The patch conv as a matmul over flattened (row, col, channel) patches; no bias (CLIP).
        self.patch_embed = layers.Linear(v.patch_size**2 * 3, v.width, (None, "embed"),
                                         bias=False, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.cls = layers.param(rngs, normal, (v.width,), ("embed",), pdt)
        self.pos_embed = layers.param(rngs, normal, (self.grid**2 + 1, v.width), (None, "embed"), pdt)
        self.ln_pre = layers.LayerNorm(v.width, eps=v.norm_eps, param_dtype=pdt, rngs=rngs)

        @nnx.split_rngs(splits=num_blocks_used(cfg))
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(r):
            return VisionBlock(cfg, rngs=r)

        self.blocks = make_blocks(rngs)

    def position_embedding(self, grid: int) -> jax.Array:
        """[grid*grid + 1, d]: the learned grid, bicubically resized for other resolutions."""
        pos = self.pos_embed[...]
        if grid == self.grid:
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:].reshape(self.grid, self.grid, -1)
        patch_pos = resize_pos_grid(patch_pos, grid)
        return jnp.concatenate([cls_pos, patch_pos.reshape(grid * grid, -1)], axis=0)

    def __call__(self, images: jax.Array) -> jax.Array:
        b, hgt, wid, _ = images.shape
        if hgt != wid or hgt % self.patch:
            raise ValueError(f"images must be square multiples of patch {self.patch}, got {hgt}x{wid}")
        g, p = hgt // self.patch, self.patch
        images = normalize_images(images, self.mean, self.std)
        patches = images.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * 3)
        x = self.patch_embed(patches)
        cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding(g).astype(x.dtype)
        x = self.ln_pre(x)

        def block(blk, h):
            return blk(h)

        block = layers.remat(block, self.remat_policy)

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry,
                  transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run(blk, h):
            return block(blk, h)

        x = run(self.blocks, x)
        return x[:, 1:]  # drop CLS: the connector consumes the patch grid (MM1 / Honeybee)
