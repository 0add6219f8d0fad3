"""The MM1 model: image encoder -> connector -> decoder, with images written into placeholders.

A packed row holds text tokens and, for each image, `num_tokens` placeholder tokens (the
tokenizer's `<image>` id, resolved at start-up and passed in as `image_token_id`). The k-th image
of a row (`images[b, k]`, valid where `image_mask[b, k]`) fills the k-th run of placeholders.
Everything keeps fixed shapes, so one compiled step serves every batch: placeholder j of a row
gathers image-token j of that row's flattened [N_img * T, D] image embeddings.

Which slots are encoded. By default all `N_img` slots of every row, filled or not. In training,
`model.image_budget = f` encodes real images only: a packed row holds on average fewer images
than it has slots (MM1's mixture: ~11 of 16, benchmarks/data_mixture.py), and an empty slot costs
the encoder as much as a full one. The rows are split into as many groups as the batch has shards
(a chip's rows form one group; one group without a mesh); each group gathers its filled slots, in
row order, into a buffer of K = ceil(f x its slots) images, encodes them (ViT + connector), and
puts their tokens back where the slots were. Groups never exchange images: the group axis is
split over the batch's mesh axes like the rows, so gathering moves nothing between chips.

Over the budget. A group with more than K images encodes its first K (in row order); the rest are
left out, their placeholders get zero embeddings, and they are counted in
`aux["data/images_over_budget"]`, which the trainer logs and warns about. This is a counted drop,
like the MoE capacity factor, and not an error: the count depends on which rows land together,
so at scale it happens now and then with any f < 1, and a run should not stop on a rare, small
loss of data. Choose f so that drops are rare at the run's rows per chip (measured for MM1's
mixture in BENCHMARKS.md); f = 1 (or None) never drops. Evaluation and generation
(`train=False`) always encode every slot, as MoE inference never drops.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mm1_jax.data.batch import Batch
from mm1_jax.errors import DataError
from mm1_jax.models import layers
from mm1_jax.models.connector import build_connector
from mm1_jax.models.decoder import Decoder
from mm1_jax.models.kernels import PORTABLE, Kernels
from mm1_jax.models.vision import VisionEncoder
from mm1_jax.sharding import batch_shards, constrain


class PlaceholderMismatchError(DataError):
    """A row's image placeholders do not match its images; raised instead of misaligning them."""


def placeholder_mismatch(tokens, image_mask, image_token_id: int, tokens_per_image: int):
    """Per-row count of placeholders minus `image_mask.sum() * tokens_per_image` ([b] int32)."""
    n_placeholders = (tokens == image_token_id).sum(-1)
    return (n_placeholders - image_mask.sum(-1) * tokens_per_image).astype(jnp.int32)


def check_placeholders(tokens, image_mask, image_token_id: int, tokens_per_image: int,
                       what: str = "rows") -> None:
    """PlaceholderMismatchError naming the `what` (rows, prompts) whose placeholder count is not
    `image_mask.sum() * tokens_per_image`; host (or concrete) arrays."""
    bad = np.asarray(placeholder_mismatch(tokens, image_mask, image_token_id, tokens_per_image))
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise PlaceholderMismatchError(
            f"{what} {rows} have image placeholder counts that differ from image_mask.sum() x "
            f"{tokens_per_image} by {bad[rows].tolist()}; each valid image needs exactly "
            "connector.num_tokens placeholders")


def merge_image_embeddings(text_embeds, tokens, image_embeds, image_token_id: int):
    """Writes image embeddings into placeholder positions.

    text_embeds: [b, s, d]; tokens: [b, s]; image_embeds: [b, n_img, t, d] -> [b, s, d].
    """
    b, n, t, d = image_embeds.shape
    is_img = tokens == image_token_id
    slot = jnp.clip(jnp.cumsum(is_img, axis=-1) - 1, 0, n * t - 1)  # j-th placeholder -> token j
    flat = constrain(image_embeds.reshape(b, n * t, d), ("batch", None, None))
    # A row gathers from its own images only, so the gather stays on the row's chip.
    gathered = constrain(jnp.take_along_axis(flat, slot[..., None], axis=1), ("batch", "seq", None))
    return constrain(jnp.where(is_img[..., None], gathered.astype(text_embeds.dtype), text_embeds),
                     ("batch", "seq", None))


def image_budget(fraction: float | None, slots: int) -> int:
    """Images one group of `slots` image slots encodes under `model.image_budget` = `fraction`."""
    if fraction is None or fraction >= 1:
        return slots
    return max(1, math.ceil(fraction * slots - 1e-9))  # 0.1 x 30 is 3.0000000000000004


def gather_filled(image_mask, groups: int, budget: int):
    """Where each group's filled slots go in its buffer of `budget` images, and back.

    image_mask: [b, n] -> (take [g, K]: the group slot (of its b / g * n, row-major) each buffer
    entry is read from, filled slots first in row order; put [g, b / g * n]: the buffer entry
    each slot's tokens come from, K (one past the buffer: zeros) for empty and over-budget
    slots; over []: filled slots left out).
    """
    b, n = image_mask.shape
    filled = constrain(image_mask.reshape(groups, b // groups * n), ("batch", None))
    take = jnp.argsort(~filled, axis=1, stable=True)[:, :budget]
    rank = jnp.cumsum(filled, axis=1) - 1
    put = jnp.where(filled & (rank < budget), rank, budget)
    over = jnp.maximum(filled.sum(1) - budget, 0).sum()
    return take, put, over.astype(jnp.int32)


def vision_encoder(m: ml_collections.ConfigDict, rngs: nnx.Rngs) -> VisionEncoder:
    """The image encoder of `m` (`cfg.model`) from its own part, `m.vision`."""
    dt, pdt = layers.dtypes(m)
    return VisionEncoder(m.vision, dtype=dt, param_dtype=pdt, remat=m.remat, rngs=rngs)


def connector(m: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """The connector of `m` (`cfg.model`): `m.connector`, between the encoder's and the
    decoder's widths."""
    dt, pdt = layers.dtypes(m)
    return build_connector(m.connector, vision_width=m.vision.width,
                           vision_grid=m.vision.image_size // m.vision.patch_size,
                           width=m.decoder.width, dtype=dt, param_dtype=pdt, rngs=rngs)


def decoder(m: ml_collections.ConfigDict, rngs: nnx.Rngs, kernels: Kernels = PORTABLE) -> Decoder:
    """The decoder of `m` (`cfg.model`) from `m.decoder` and `m.moe`, running `kernels`."""
    dt, pdt = layers.dtypes(m)
    return Decoder(m.decoder, m.moe, dtype=dt, param_dtype=pdt, remat=m.remat,
                   kernels=kernels, loss_chunks=m.loss_chunks, rngs=rngs)


# Each component on its own (converters, tests), built exactly as MM1Model builds it.
COMPONENTS = {"vision": vision_encoder, "connector": connector, "decoder": decoder}


class MM1Model(nnx.Module):
    """m: `cfg.model`; image_token_id: the tokenizer's `<image>` placeholder id; kernels: the
    layers' kernels as start-up resolved them (mm1_jax/models/kernels.py)."""

    def __init__(self, m: ml_collections.ConfigDict, *, image_token_id: int, rngs: nnx.Rngs,
                 kernels: Kernels = PORTABLE):
        if not 0 <= image_token_id < m.decoder.vocab_size:
            raise ValueError(f"image_token_id {image_token_id} is outside the decoder's "
                             f"vocabulary of {m.decoder.vocab_size} (config.model.decoder.vocab_size)")
        self.image_token_id = image_token_id
        self.tokens_per_image = m.connector.num_tokens
        # A share of the slots (< 1), or None: every slot, as without a budget (also for 1.0).
        budget = m.image_budget
        self.image_budget = budget if budget is not None and budget < 1 else None
        self.vision = vision_encoder(m, rngs)
        self.connector = connector(m, rngs)
        self.decoder = decoder(m, rngs, kernels)
        self.moe_coefs = (m.moe.load_balance_coef, m.moe.z_loss_coef) if m.moe.num_experts else None

    def encode_images(self, images: jax.Array) -> jax.Array:
        """images: uint8 [b, n_img, H, W, 3] -> image token embeddings [b, n_img, T, D]."""
        b, n = images.shape[:2]
        # Row-major [b, n] -> [b * n]: a chip's rows become a contiguous block of images, so the
        # image batch splits over the same mesh axes as the rows.
        flat = constrain(images.reshape(b * n, *images.shape[2:]), ("batch", None, None, None))
        tokens = self.connector(self.vision(flat))
        return constrain(tokens.reshape(b, n, *tokens.shape[1:]), ("batch", None, None, None))

    def encode_filled(self, images: jax.Array, image_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Only the filled slots, within `model.image_budget` per batch shard (module docstring).

        images: uint8 [b, n_img, H, W, 3]; image_mask: [b, n_img] -> (image token embeddings
        [b, n_img, T, D], zero for empty and over-budget slots; images over the budget []).
        """
        b, n = image_mask.shape
        g = batch_shards(b)
        k = image_budget(self.image_budget, b // g * n)
        take, put, over = gather_filled(image_mask, g, k)
        # [g, slots, ...]: group i is the i-th block of rows, the rows one batch shard holds, so
        # the gathers below index within a shard.
        grouped = constrain(images.reshape(g, b // g * n, *images.shape[2:]),
                            ("batch", None, None, None, None))
        chosen = jnp.take_along_axis(grouped, take[:, :, None, None, None], axis=1)
        flat = constrain(chosen.reshape(g * k, *images.shape[2:]), ("batch", None, None, None))
        tokens = self.connector(self.vision(flat))  # [g * k, T, D]
        tokens = tokens.reshape(g, k, *tokens.shape[1:])
        tokens = jnp.concatenate([tokens, jnp.zeros_like(tokens[:, :1])], axis=1)  # entry K: zeros
        tokens = constrain(tokens, ("batch", None, None, None))
        back = jnp.take_along_axis(tokens, put[:, :, None, None], axis=1)  # [g, slots, T, D]
        return constrain(back.reshape(b, n, *back.shape[2:]), ("batch", None, None, None)), over

    def embed_inputs(self, tokens: jax.Array, images: jax.Array | None,
                     image_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Token embeddings [b, s, D] with each image's tokens in its placeholder run, and the
        images left out by the budget ([] int32). With `image_mask` and `model.image_budget`
        only filled slots are encoded (`encode_filled`); otherwise every slot, and none is left
        out."""
        x = self.decoder.embed_tokens(tokens)
        over = jnp.zeros((), jnp.int32)
        if images is not None and images.shape[1] > 0:
            if image_mask is None or self.image_budget is None:
                embeds = self.encode_images(images)
            else:
                embeds, over = self.encode_filled(images, image_mask)
            x = merge_image_embeddings(x, tokens, embeds, self.image_token_id)
        return x, over

    def __call__(self, batch: Batch, train: bool = True):
        """batch: the contract's `Batch` (mm1_jax/data/batch.py); the model reads its tokens,
        positions, segment_ids [b, s], images [b, n_img, H, W, 3] and image_mask [b, n_img].

        Returns (logits [b, s, V], aux); see mm1_jax.train for how aux enters the loss.
        """
        h, aux = self.features(batch, train)
        return self.decoder.head(h), aux

    def features(self, batch: Batch, train: bool = True):
        """As `__call__`, but (the decoder's final normed hidden states [b, s, d], aux): the
        training loss projects them itself (`Decoder.head_loss`)."""
        tokens, image_mask = batch.tokens, batch.image_mask
        mismatch = placeholder_mismatch(tokens, image_mask, self.image_token_id, self.tokens_per_image)
        if not isinstance(mismatch, jax.core.Tracer):  # eagerly: an error; under jit: counted
            check_placeholders(tokens, image_mask, self.image_token_id, self.tokens_per_image)

        # The image budget is a training economy; evaluation encodes every image.
        x, over = self.embed_inputs(tokens, batch.images, image_mask if train else None)
        h, stats = self.decoder.features(x, batch.positions, batch.segment_ids, train=train)

        aux = {"data/placeholder_mismatch": (mismatch != 0).sum().astype(jnp.int32),
               "data/images_over_budget": over}
        if self.moe_coefs is None:
            aux.update({"moe/aux_loss": jnp.zeros((), jnp.float32)})
        else:
            # stats: one entry per period (= per MoE layer), stacked by the scan. Aux losses are
            # AVERAGED over MoE layers, so a coefficient means the same at any depth.
            lb, z = stats["load_balance_loss"].mean(), stats["z_loss"].mean()
            aux.update({
                "moe/load_balance_loss": lb,
                "moe/z_loss": z,
                "moe/aux_loss": self.moe_coefs[0] * lb + self.moe_coefs[1] * z,
                "moe/expert_load": stats["expert_load"],
                "moe/dropped_fraction": stats["dropped_fraction"],
            })
        return h, aux
