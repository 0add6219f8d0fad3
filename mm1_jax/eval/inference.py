"""Running the model for evaluation: batched generation from token prompts, and text perplexity.

Shapes are kept few so compiled functions are reused: prompts are sorted by length and cut into
batches of a fixed size (the last one filled up with copies), so generation compiles once per
distinct (batch length, image count), and perplexity runs every batch at [batch_size, seq_len].
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mm1_jax import sharding
from mm1_jax.data.batch import Batch, targets_and_loss_mask
from mm1_jax.data.kinds import KIND_IDS


@dataclasses.dataclass(frozen=True)
class PromptItem:
    tokens: list[int]  # with the image placeholder runs
    images: list  # sources (paths, bytes) for `load_image`, one per image block, in order


def stop_ids(tok) -> tuple[int, ...]:
    """Tokens that end a generation: end of text, or the start of a new image or document
    (a few-shot model may go on to write the next example)."""
    return (tok.eos_id, tok.bos_id, tok.pad_id, tok.image_start_id)


def generate_texts(model, tok, items: Sequence[PromptItem], load_image: Callable, *,
                   max_new_tokens: int, batch_size: int, image_size: int) -> list[str]:
    """Greedy continuation of each prompt, decoded to text (special tokens dropped)."""
    from mm1_jax.eval.generate import generate

    order = sorted(range(len(items)), key=lambda i: (len(items[i].images), len(items[i].tokens)))
    out: list[str | None] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [items[i] for i in idx] + [items[idx[-1]]] * (batch_size - len(idx))
        n_img = max(len(r.images) for r in rows)
        images = np.zeros((len(rows), n_img, image_size, image_size, 3), np.uint8)
        mask = np.zeros((len(rows), n_img), bool)
        for b, r in enumerate(rows):
            for k, src in enumerate(r.images):
                images[b, k], mask[b, k] = load_image(src), True
        new = generate(model, [r.tokens for r in rows], images, mask,
                       max_new_tokens=max_new_tokens, stop_ids=stop_ids(tok), pad_id=tok.pad_id)
        for i, ids in zip(idx, new):
            out[i] = tok.decode(ids)
    return out  # type: ignore[return-value]


@functools.partial(jax.jit, static_argnums=0)
def _nll(graphdef, state, batch):
    model = nnx.merge(graphdef, state)
    logits, _ = model(batch, train=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, batch.targets[..., None], axis=-1)[..., 0]
    return -(picked * batch.loss_mask).sum(), batch.loss_mask.sum()


def text_perplexity(model, docs: Sequence[Sequence[int]], *, batch_size: int, seq_len: int,
                    special, image_size: int) -> tuple[float, int]:
    """(perplexity, scored tokens) of text-only token sequences (<s> ... </s>, as
    mm1_jax.data.examples.layout writes them), each cut to seq_len and alone in its row: exp of
    the mean negative log-likelihood of the tokens the trainer's loss counts (targets and mask
    from the batch contract's one function). special: the tokenizer's SpecialIds."""
    docs = [list(d[:seq_len]) for d in docs if len(d) > 1]
    if not docs:
        raise ValueError("text perplexity: no held-out text tokens to score")
    graphdef, state = nnx.split(model)
    mesh = sharding.mesh_of(state)  # a sharded model scores where it lives
    total, count = 0.0, 0.0
    for start in range(0, len(docs), batch_size):
        tokens = np.full((batch_size, seq_len), special.pad, np.int32)
        segment_ids = np.zeros((batch_size, seq_len), np.int32)
        positions = np.zeros((batch_size, seq_len), np.int32)
        for r, doc in enumerate(docs[start:start + batch_size]):
            tokens[r, :len(doc)], segment_ids[r, :len(doc)] = doc, 1
            positions[r, :len(doc)] = np.arange(len(doc))
        targets, loss_mask = targets_and_loss_mask(tokens, segment_ids, special)
        none = np.zeros((batch_size,), np.int32)
        b = Batch(tokens=tokens, targets=targets, loss_mask=loss_mask, segment_ids=segment_ids,
                  positions=positions, kinds=np.where(segment_ids > 0, KIND_IDS["text"], 0),
                  images=np.zeros((batch_size, 0, image_size, image_size, 3), np.uint8),
                  image_mask=np.zeros((batch_size, 0), bool), truncated=none, dropped=none)
        nll, n_tok = (float(sharding.to_host(x))
                      for x in _nll(graphdef, state, sharding.to_mesh_inputs(b, mesh)))
        total, count = total + float(nll), count + float(n_tok)
    return math.exp(total / count), int(count)
