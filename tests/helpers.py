"""Test-only code shared by several test modules: references and conveniences that
the library does not carry (it holds no test-only code)."""

from __future__ import annotations

import functools
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mm1_jax.data.batch import FIELDS, Batch
from mm1_jax.data.synthetic import SyntheticBatches
from mm1_jax.eval import generate as generate_lib
from mm1_jax.train.state import TrainState, abstract_train_state, init_train_state


def as_dict(batch: Batch) -> dict:
    """The fields of `batch` by name (no copies)."""
    return {name: getattr(batch, name) for name in FIELDS}


def model_batch(tokens, positions, segment_ids, images, image_mask) -> Batch:
    """A Batch holding only what the model reads (tokens, positions, segments, images); the
    supervision fields are zeros. Works on numpy and inside jit."""
    zeros = jnp.zeros_like(tokens)
    rows = jnp.zeros(tokens.shape[:1], jnp.int32)
    return Batch(tokens=tokens, targets=zeros, loss_mask=zeros.astype(jnp.float32),
                 segment_ids=segment_ids, positions=positions, kinds=zeros, images=images,
                 image_mask=image_mask, truncated=rows, dropped=rows)


def create_train_state(run) -> tuple[TrainState, TrainState]:
    """(state, shardings): a freshly initialised state, created sharded on `run.mesh`."""
    abstract, shardings = abstract_train_state(run)
    return init_train_state(run, abstract, shardings), shardings


class NaNFrom(SyntheticBatches):
    """Synthetic batches whose loss mask is NaN from batch `start` on (uint8 pixels cannot be
    NaN; the loss can)."""

    def __init__(self, cfg, start: int, **kw):
        super().__init__(cfg, **kw)
        self.start = start

    def __next__(self) -> Batch:
        index = self.index
        batch = super().__next__()
        if index >= self.start:
            batch.loss_mask[:] = np.nan
        return batch


# ------------------------------------------------------------------ the data position, alone


def save_state(iterator: grain.DatasetIterator, directory: str) -> None:
    """Saves a Grain iterator's position with Orbax (grain's handler), as the trainer's
    CheckpointManager does for its "data" item."""
    with ocp.Checkpointer(grain.checkpoint.CheckpointHandler()) as ckpt:
        ckpt.save(os.path.abspath(directory), args=grain.checkpoint.CheckpointSave(iterator))


def restore_state(iterator: grain.DatasetIterator, directory: str) -> grain.DatasetIterator:
    """Restores a position saved by `save_state` into `iterator`."""
    with ocp.Checkpointer(grain.checkpoint.CheckpointHandler()) as ckpt:
        return ckpt.restore(os.path.abspath(directory),
                            args=grain.checkpoint.CheckpointRestore(iterator))


# ------------------------------------------------------------------ generation without a cache


def generate_uncached(model, prompts, images, image_mask, *, max_new_tokens: int, stop_ids,
                      pad_id: int, temperature: float = 0.0, rng=None) -> list[list[int]]:
    """`mm1_jax.eval.generate.generate` recomputing the whole sequence every step (quadratic
    cost): the reference the KV-cached decoder must equal."""
    tokens, valid = generate_lib._left_pad(prompts, pad_id)
    key = np.asarray(jax.random.key_data(rng if rng is not None else jax.random.key(0)))
    graphdef, state = nnx.split(model)
    out = _decode_uncached(graphdef, state, tokens, valid, np.asarray(images), key,
                           max_new_tokens, float(temperature))
    return generate_lib._cut(np.asarray(out), set(stop_ids))


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _decode_uncached(graphdef, state, tokens, valid, images, key, max_new, temperature):
    rng = jax.random.wrap_key_data(key)
    b, length = tokens.shape
    total = length + max_new
    buf = jnp.zeros((b, total), jnp.int32).at[:, :length].set(tokens)
    seg = jnp.zeros((b, total), jnp.int32).at[:, :length].set(valid.astype(jnp.int32))
    rngs = jax.random.split(rng, max_new)
    image_mask = jnp.ones(images.shape[:2], bool)  # the prompts' placeholders match their images

    def step(i, carry):
        buf, seg, state = carry
        model = nnx.merge(graphdef, state)
        positions = jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0)
        logits, _ = model(model_batch(buf, positions, seg, images, image_mask), train=False)
        last = jax.lax.dynamic_index_in_dim(logits, length + i - 1, 1, keepdims=False)
        nxt = generate_lib._pick(last, rngs[i], temperature, model.image_token_id)
        return buf.at[:, length + i].set(nxt), seg.at[:, length + i].set(1), state

    buf, *_ = jax.lax.fori_loop(0, max_new, step, (buf, seg, state))
    return buf[:, length:]
