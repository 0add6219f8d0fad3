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
from flax import nnx

from mm1_jax.models import layers
from mm1_jax.sharding import constrain

# Every activation here is [b, ...] with b = images; it stays split over the batch's mesh axes.
# Without these constraints FSDP lets the compiler follow the "embed"-sharded weights and hold
# all of the global batch's images on every chip.
_BATCH = ("batch", None, None)


def normalize_images(images: jax.Array, mean, std) -> jax.Array:
    """uint8 pixels -> float32 (x / 255 - mean) / std (CLIP preprocessing).

    Every reader (training pipeline, evaluation, generation) ships uint8 pixels (4x fewer bytes
    host-to-device, no float pass on the host) and the model normalises them here, on the
    accelerator. Anything else is an error rather than a guess that it is already normalised.
    """
    if images.dtype != jnp.uint8:
        raise TypeError(f"images must be uint8 pixels (the model normalises them), got "
                        f"{images.dtype}; to feed normalised floats call VisionEncoder.forward")
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) * (1.0 / 255.0) - mean) / std


def num_blocks_used(v: ml_collections.ConfigDict) -> int:
    """Blocks up to and including the feature layer (of `cfg.model.vision`); later blocks would
    be dead weight."""
    return v.feature_layer if v.feature_layer > 0 else v.depth + 1 + v.feature_layer


class VisionBlock(nnx.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, v: ml_collections.ConfigDict, *, dtype, param_dtype, rngs: nnx.Rngs):
        dt, pdt = dtype, param_dtype
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
        x = constrain(x, _BATCH)
        y = self.ln_1(x)
        attn = jax.nn.dot_product_attention(split(self.q(y)), split(self.k(y)), split(self.v(y)))
        x = constrain(x + self.o(attn.reshape(b, p, d)), _BATCH)
        return constrain(x + self.fc2(self.act(self.fc1(self.ln_2(x)))), _BATCH)


class VisionEncoder(nnx.Module):
    """images [b, H, W, 3] uint8 -> patch features [b, g*g, d] of the feature layer.

    v: `cfg.model.vision`; dtype / param_dtype: compute and storage dtypes; remat: the policy
    name applied to every block (`cfg.model.remat`)."""

    def __init__(self, v: ml_collections.ConfigDict, *, dtype, param_dtype, remat: str,
                 rngs: nnx.Rngs):
        dt, pdt = dtype, param_dtype
        self.dtype, self.patch, self.grid = dt, v.patch_size, v.image_size // v.patch_size
        self.remat_policy = remat
        self.mean, self.std = tuple(v.mean), tuple(v.std)
        scale = v.width**-0.5  # CLIP's init scale for class / position embeddings
        normal = nnx.initializers.normal(scale)
        # The patch conv as a matmul over flattened (row, col, channel) patches; no bias (CLIP).
        self.patch_embed = layers.Linear(v.patch_size**2 * 3, v.width, (None, "embed"),
                                         bias=False, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.cls = layers.param(rngs, normal, (v.width,), ("embed",), pdt)
        self.pos_embed = layers.param(rngs, normal, (self.grid**2 + 1, v.width), (None, "embed"), pdt)
        self.ln_pre = layers.LayerNorm(v.width, eps=v.norm_eps, param_dtype=pdt, rngs=rngs)

        @nnx.split_rngs(splits=num_blocks_used(v))
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(r):
            return VisionBlock(v, dtype=dt, param_dtype=pdt, rngs=r)

        self.blocks = make_blocks(rngs)

    def position_embedding(self, grid: int) -> jax.Array:
        """[grid*grid + 1, d]: the learned grid, bicubically resized for other resolutions."""
        pos = self.pos_embed[...]
        return jnp.concatenate([pos[:1], layers.resize_grid(pos[1:], grid)], axis=0)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images: uint8 [b, H, W, 3] -> [b, g*g, d]."""
        return self.forward(normalize_images(images, self.mean, self.std))

    def forward(self, images: jax.Array) -> jax.Array:
        """CLIP-normalised float images [b, H, W, 3] -> [b, g*g, d] (reference comparisons)."""
        b, hgt, wid, _ = images.shape
        if hgt != wid or hgt % self.patch:
            raise ValueError(f"images must be square multiples of patch {self.patch}, got {hgt}x{wid}")
        g, p = hgt // self.patch, self.patch
        patches = images.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * 3)
        x = self.patch_embed(constrain(patches, _BATCH))
        cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding(g).astype(x.dtype)
        x = constrain(self.ln_pre(x), _BATCH)

        def block(blk, h):
            return blk(h)

        block = layers.remat(block, self.remat_policy)

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry,
                  transform_metadata={nnx.PARTITION_NAME: "layers"})
        def run(blk, h):
            return block(blk, h)

        x = run(self.blocks, x)
        return constrain(x[:, 1:], _BATCH)  # drop CLS: the connector consumes the patch grid (MM1 / Honeybee)
