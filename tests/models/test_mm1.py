"""The MM1 model: image embeddings land in their placeholders, mismatches are errors, packing
with images is exact, and the demo model trains (forward + backward) on CPU."""

import math
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mm1_jax.config import load_config
from mm1_jax.models.mm1 import MM1Model, PlaceholderMismatchError, merge_image_embeddings
from mm1_jax.data.synthetic import SPECIAL, make_global_batch
from tests.helpers import model_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMG = 3  # image placeholder id in these tests


@pytest.fixture(scope="module")
def cfg():
    c = load_config(os.path.join(ROOT, "experiments", "demo_cpu.py"))
    c.model.decoder.depth = 2
    return c


@pytest.fixture(scope="module")
def model(cfg):
    return MM1Model(cfg.model, image_token_id=IMG, rngs=nnx.Rngs(0))


def _doc(rng, n_text, n_images, t):
    """A document: text, then per image <placeholder x t>, then text; returns tokens."""
    parts = [rng.integers(10, 1000, n_text)]
    for _ in range(n_images):
        parts += [np.full(t, IMG), rng.integers(10, 1000, 3)]
    return np.concatenate(parts)


def _batch(cfg, docs, images_per_doc, images, seq):
    """Packs `docs` into one row of length `seq`."""
    tokens, positions, segments = np.zeros(seq, int), np.zeros(seq, int), np.zeros(seq, int)
    at = 0
    for i, d in enumerate(docs):
        tokens[at:at + len(d)], positions[at:at + len(d)], segments[at:at + len(d)] = d, np.arange(len(d)), i + 1
        at += len(d)
    n = cfg.data.max_images
    img = np.zeros((1, n) + images.shape[1:], np.uint8)
    img[0, :len(images)] = images
    mask = np.zeros((1, n), bool)
    mask[0, :sum(images_per_doc)] = True
    return model_batch(tokens[None], positions[None], segments[None], img, mask)


def test_merge_writes_kth_image_into_kth_placeholder_run():
    tokens = jnp.array([[1, IMG, IMG, 2, IMG, IMG, 4, 0]])
    text = jnp.zeros((1, 8, 1))
    images = jnp.arange(1, 7, dtype=jnp.float32).reshape(1, 3, 2, 1)  # 3 slots, 2 tokens each
    out = merge_image_embeddings(text, tokens, images, IMG)[0, :, 0]
    np.testing.assert_array_equal(out, [0, 1, 2, 0, 3, 4, 0, 0])


def test_placeholder_mismatch_is_a_clear_error(cfg, model):
    rng = np.random.default_rng(0)
    t = cfg.model.connector.num_tokens
    doc = _doc(rng, 5, 2, t)  # 2 images' worth of placeholders ...
    imgs = rng.integers(0, 256, (1, 32, 32, 3), np.uint8)
    batch = _batch(cfg, [doc], [1], imgs, cfg.train.seq_len)  # ... but only one valid image
    with pytest.raises(PlaceholderMismatchError, match=r"rows \[0\].*by \[16\]"):
        model(batch)
    # Under jit the same condition is reported through aux for the training loop to raise on.
    _, aux = nnx.jit(lambda m, b: m(b))(model, batch)
    assert int(aux["data/placeholder_mismatch"]) == 1


def test_packed_multimodal_documents_equal_separate_runs(cfg, model):
    rng = np.random.default_rng(1)
    t = cfg.model.connector.num_tokens
    a, b = _doc(rng, 6, 2, t), _doc(rng, 4, 1, t)
    imgs = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
    seq = cfg.train.seq_len
    packed, _ = model(_batch(cfg, [a, b], [2, 1], imgs, seq))
    alone_a, _ = model(_batch(cfg, [a], [2], imgs[:2], seq))
    alone_b, _ = model(_batch(cfg, [b], [1], imgs[2:], seq))
    np.testing.assert_allclose(packed[0, :len(a)], alone_a[0, :len(a)], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(packed[0, len(a):len(a) + len(b)], alone_b[0, :len(b)], rtol=2e-5, atol=2e-5)
    # The images matter: swapping b's image changes b's logits after its placeholders.
    other = _batch(cfg, [b], [1], rng.integers(0, 256, (1, 32, 32, 3), np.uint8), seq)
    assert np.abs(np.asarray(model(other)[0][0, 4 + t:len(b)] - alone_b[0, 4 + t:len(b)])).max() > 1e-4


def test_demo_forward_backward_reduces_loss(cfg):
    """A few SGD steps on one fixed batch: forward and backward on CPU give a usable gradient
    (the loss drops), and the gradient reaches every component."""
    model = MM1Model(cfg.model, image_token_id=IMG, rngs=nnx.Rngs(2))
    rng = np.random.default_rng(2)
    t = cfg.model.connector.num_tokens
    doc = _doc(rng, 20, 2, t)
    batch = _batch(cfg, [doc], [2], rng.integers(0, 256, (2, 32, 32, 3), np.uint8), cfg.train.seq_len)
    targets = np.roll(batch.tokens, -1, axis=1)
    mask = ((batch.segment_ids > 0) & (batch.tokens != IMG) & (targets != IMG)).astype(np.float32)
    mask[0, len(doc) - 1:] = 0

    def loss_fn(m):
        logits, aux = m(batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
        return (ce * mask).sum() / mask.sum() + aux["moe/aux_loss"]

    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss, grads

    loss0, grads = step(model, opt)
    for part in ("vision", "connector", "decoder"):
        norm = optax.global_norm(nnx.state(grads, nnx.Param)[part])
        assert float(norm) > 0, part
    for _ in range(10):
        loss, _ = step(model, opt)
    assert float(loss) < 0.5 * float(loss0)
    assert np.isclose(float(loss0), np.log(cfg.model.decoder.vocab_size), rtol=0.2)  # ~uniform at init


# ------------------------------------------------------------------ the image budget


def _budget_model(cfg, budget):
    """The module's model (same initialisation) with `model.image_budget` = budget."""
    c = cfg.copy_and_resolve_references()
    c.model.image_budget = budget
    return MM1Model(c.model, image_token_id=IMG, rngs=nnx.Rngs(0))


def _loss_and_grads(model, batch):
    def loss_fn(m):
        logits, aux = m(batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             batch.targets)
        return (ce * batch.loss_mask).sum() / batch.loss_mask.sum(), aux

    (loss, aux), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    return float(loss), aux, nnx.to_flat_state(nnx.state(grads, nnx.Param))


def _encoded(monkeypatch):
    """Records the number of images each call of the vision encoder receives."""
    from mm1_jax.models.vision import VisionEncoder

    seen, real = [], VisionEncoder.__call__

    def spy(self, images):
        seen.append(images.shape[0])
        return real(self, images)

    monkeypatch.setattr(VisionEncoder, "__call__", spy)
    return seen


def test_image_budget_gives_the_same_loss_and_gradients_as_every_slot(cfg, monkeypatch):
    """Rows with 1..6 of 6 images; a budget that holds exactly the batch's images, and a looser
    one (the buffer then also holds empty slots): loss and every parameter's gradient equal
    the every-slot path's, while the encoder sees only the budget."""
    batch = make_global_batch(cfg, 0, 0, special=SPECIAL)
    counts = batch.image_mask.sum(1)
    assert len(set(counts.tolist())) > 2, counts  # rows hold different numbers of images
    filled, slots = int(counts.sum()), batch.image_mask.size
    seen = _encoded(monkeypatch)
    loss, aux, grads = _loss_and_grads(_budget_model(cfg, None), batch)
    assert seen == [slots]
    for budget, encoded in ((filled / slots, filled), (0.9, math.ceil(0.9 * slots))):
        seen.clear()
        loss_b, aux_b, grads_b = _loss_and_grads(_budget_model(cfg, budget), batch)
        assert seen == [encoded] and encoded < slots
        assert int(aux_b["data/images_over_budget"]) == 0
        assert loss_b == pytest.approx(loss, rel=1e-6)
        assert [p for p, _ in grads_b] == [p for p, _ in grads]
        for (path, g), (_, g_b) in zip(grads, grads_b):
            np.testing.assert_allclose(g_b[...], g[...], rtol=1e-5, atol=1e-7, err_msg=str(path))
    assert optax.global_norm(nnx.State.from_flat_path(grads)["vision"]) > 0  # images are trained


def test_images_over_the_budget_are_left_out_and_counted(cfg, monkeypatch):
    """5 images more than the budget: the last 5 filled slots in row order are not encoded,
    their placeholders get zeros, everything else is as with every slot encoded; evaluation
    (train=False) encodes them all."""
    batch = make_global_batch(cfg, 0, 0, special=SPECIAL)
    mask, t = batch.image_mask, cfg.model.connector.num_tokens
    budget = (int(mask.sum()) - 5) / mask.size
    full, limited = _budget_model(cfg, None), _budget_model(cfg, budget)
    seen = _encoded(monkeypatch)
    x_full, _ = full.embed_inputs(batch.tokens, batch.images, batch.image_mask)
    x, over = limited.embed_inputs(batch.tokens, batch.images, batch.image_mask)
    assert int(over) == 5 and seen == [mask.size, int(mask.sum()) - 5]
    # Independently: placeholder j of row r belongs to the row's image j // t; the image is
    # dropped when it is among the batch's last 5 filled slots in row-major order.
    dropped_slots = set(map(tuple, np.argwhere(mask)[-5:].tolist()))
    is_img = batch.tokens == IMG
    image_of = np.cumsum(is_img, axis=1) - 1
    dropped = np.zeros_like(is_img)
    for r, j in zip(*np.nonzero(is_img)):
        dropped[r, j] = (r, image_of[r, j] // t) in dropped_slots
    assert dropped.sum() == 5 * t
    np.testing.assert_array_equal(np.asarray(x)[dropped], 0.0)
    np.testing.assert_allclose(np.asarray(x)[~dropped], np.asarray(x_full)[~dropped],
                               rtol=1e-6, atol=1e-6)
    _, aux = nnx.jit(lambda m, b: m(b))(limited, batch)  # training: counted under jit too
    assert int(aux["data/images_over_budget"]) == 5
    logits_eval, aux_eval = limited(batch, train=False)
    assert int(aux_eval["data/images_over_budget"]) == 0
    np.testing.assert_allclose(logits_eval, full(batch, train=False)[0], rtol=1e-6, atol=1e-6)


def test_image_budget_on_8_devices_gathers_per_batch_shard():
    """data=2 x fsdp=4 (8 shards of 2 rows): with a budget that holds every shard's images, loss
    and gradients equal every slot encoded on one device; a tighter budget drops per shard (a
    gather over the whole batch would count differently); no uint8 value (an image) crosses
    between devices, which the check sees when the gather is global."""
    import json

    from tests.train.conftest import run_python

    p = run_python(["tests/models/sharded_budget.py"], devices=8, timeout=900)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    ref = out["one_every_slot"]
    eight = out["eight_fits"]
    assert eight["loss"] == pytest.approx(ref["loss"], rel=1e-6) and eight["over"] == 0
    # Every element of every parameter's gradient within rtol 1e-5, atol 1e-7 of one device's.
    assert eight["grad_err"] <= 1.0 and eight["grad_elements"] > 500_000, eight
    per_group, slots = np.array(out["per_group"]), out["slots_per_group"]
    k = math.ceil(out["budgets"]["tight"] * slots - 1e-9)
    expected = int(np.maximum(per_group - k, 0).sum())
    assert expected != max(int(per_group.sum()) - 8 * k, 0)  # per shard, not global: tells apart
    assert out["eight_tight"]["over"] == expected
    for name in ("eight_fits", "eight_tight"):
        assert out[name]["moved"] == [], (name, out[name]["moved"])
    assert out["eight_global_gather_moved"], "the check must see images cross devices"
