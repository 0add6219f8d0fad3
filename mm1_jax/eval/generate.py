"""Batched generation for the MM1 model: a KV-cached prefill, then a jit-compiled decode loop.

Prompts are left-padded to one length so every row writes its next token to the same cache
slot; padding slots are masked out of attention and RoPE positions count real tokens only, so a
row generates exactly what it would generate alone. The whole decode loop is one
`jax.lax.fori_loop` inside one jit: no recompilation per token (one compile per prompt length,
batch size and `max_new_tokens`).

Sharded models generate where they live: with parameters sharded on the training mesh (FSDP,
tensor and expert axes), the prompts go to that mesh (replicated; on several processes as global
arrays), the KV cache is split like the activations (batch over the data axes, kv heads over
`tensor`) and only the generated token ids come back to the host. No host gathers parameters.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mm1_jax import sharding
from mm1_jax.models.mm1 import MM1Model, check_placeholders


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    length = max(len(p) for p in prompts)
    if length == 0:
        raise ValueError("every prompt is empty; generation needs at least one token")
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    valid = np.zeros((len(prompts), length), bool)
    for i, p in enumerate(prompts):
        if len(p):
            tokens[i, length - len(p):], valid[i, length - len(p):] = p, True
    return tokens, valid


def _pick(logits, rng, temperature, image_token_id):
    """Greedy (temperature 0) or sampled next token from logits [b, V].

    The image placeholder is never generated: the model reads images, it does not write them.
    """
    logits = logits.at[:, image_token_id].set(-jnp.inf)
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits.astype(jnp.float32) / temperature).astype(jnp.int32)


def _cut(rows: np.ndarray, stop_ids: Sequence[int]) -> list[list[int]]:
    out = []
    for row in rows.tolist():
        stops = [i for i, t in enumerate(row) if t in stop_ids]
        out.append(row[:stops[0]] if stops else row)
    return out


def generate(model: MM1Model, prompts: Sequence[Sequence[int]], images: np.ndarray,
             image_mask: np.ndarray, *, max_new_tokens: int, stop_ids: Sequence[int], pad_id: int,
             temperature: float = 0.0, rng: jax.Array | None = None) -> list[list[int]]:
    """Continues each prompt; returns the new tokens of each row, cut before the first stop id.

    prompts: token lists that already hold image placeholder runs; images: [b, n_img, H, W, 3]
    uint8 pixels as the data pipeline ships them (the model normalises them); image_mask:
    [b, n_img].
    """
    tokens, valid = _left_pad(prompts, pad_id)
    image_mask = np.asarray(image_mask, bool)
    check_placeholders(tokens, image_mask, model.image_token_id, model.tokens_per_image,
                       what="prompts")
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs an rng key")
    key = np.asarray(jax.random.key_data(rng if rng is not None else jax.random.key(0)))
    graphdef, state = nnx.split(model)
    inputs = sharding.to_mesh_inputs((tokens, valid, np.asarray(images), key),
                                     sharding.mesh_of(state))
    out = _decode_cached(graphdef, state, *inputs, max_new_tokens, float(temperature))
    return _cut(sharding.to_host(out), set(stop_ids))


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _decode_cached(graphdef, state, tokens, valid, images, key, max_new, temperature):
    rng = jax.random.wrap_key_data(key)
    model = nnx.merge(graphdef, state)
    dec = model.decoder
    b, length = tokens.shape
    total = length + max_new
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    key_valid = jnp.zeros((b, total), bool).at[:, :length].set(valid)
    cache = dec.init_cache(b, total)
    x, _ = model.embed_inputs(tokens, images)  # every image: no budget at inference
    logits, cache = dec.forward_with_cache(x, positions, key_valid, cache, 0)
    next_pos = positions[:, -1] + 1
    rngs = jax.random.split(rng, max_new)
    first = _pick(logits[:, -1], rngs[0], temperature, model.image_token_id)
    out = jnp.zeros((b, max_new), jnp.int32).at[:, 0].set(first)

    # Modules cannot cross into the loop's trace: the decoder's state rides in the carry.
    dec_graph, dec_state = nnx.split(dec)
    image_token_id = model.image_token_id

    def step(i, carry):
        out, cache, key_valid, dec_state = carry
        dec = nnx.merge(dec_graph, dec_state)
        slot = length + i - 1  # slot of the token generated at step i - 1
        key_valid = key_valid.at[:, slot].set(True)
        x = dec.embed_tokens(jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1))
        logits, cache = dec.forward_with_cache(x, (next_pos + i - 1)[:, None], key_valid, cache, slot)
        nxt = _pick(logits[:, 0], rngs[i], temperature, image_token_id)
        return out.at[:, i].set(nxt), cache, key_valid, dec_state

    out, *_ = jax.lax.fori_loop(1, max_new, step, (out, cache, key_valid, dec_state))
    return out
