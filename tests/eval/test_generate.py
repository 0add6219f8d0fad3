"""KV-cached generation equals recomputing the whole sequence, token for token, for batched
prompts of different lengths with images; and each row equals its own unbatched run, for the
dense and the MoE decoder (inference never drops tokens, so rows never compete for experts)."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from mm1_jax.config import load_config
from mm1_jax.eval.generate import generate
from mm1_jax.models.mm1 import MM1Model, PlaceholderMismatchError
from tests.helpers import generate_uncached

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMG, PAD, EOS = 3, 0, 2


def _setup(moe: bool):
    cfg = load_config(os.path.join(ROOT, "experiments", "demo_cpu.py"))
    cfg.data.max_images = 2
    if moe:  # 32 experts in every layer, trained with capacity: the dropping setting
        m = cfg.model.moe
        m.num_experts, m.every, m.mode, m.capacity_factor = 32, 1, "capacity", 1.25
    model = MM1Model(cfg.model, image_token_id=IMG, rngs=nnx.Rngs(3))
    # Sharpen the random model's output so greedy choices are not decided by float noise.
    emb = model.decoder.embed
    emb.value = emb.value * 30.0
    rng = np.random.default_rng(0)
    t = cfg.model.connector.num_tokens
    prompts = [list(rng.integers(10, 1000, 4)) + [IMG] * t + list(rng.integers(10, 1000, 3)),
               list(rng.integers(10, 1000, 2)),
               [IMG] * t + [11] + [IMG] * t + [12, 13]]
    images = rng.integers(0, 256, (3, 2, 32, 32, 3), np.uint8)
    mask = np.array([[True, False], [False, False], [True, True]])
    return cfg, model, prompts, images, mask


@pytest.fixture(scope="module")
def setup():
    return _setup(moe=False)


def test_moe_batched_generation_equals_each_row_alone_and_no_cache():
    """Batched MoE decoding gives every row what it gives alone, and what recomputing the
    whole sequence gives. With capacity routing at decode time 8 rows x 1 token share one group
    (capacity 1 per expert of 32), so about a quarter of assignments dropped and rows differed."""
    cfg, model, prompts, images, mask = _setup(moe=True)
    rng = np.random.default_rng(9)
    # 8 rows: the three prompts and five more text-only ones
    prompts = prompts + [list(rng.integers(10, 1000, int(n))) for n in rng.integers(2, 9, 5)]
    images = np.concatenate([images, np.zeros((5, 2, 32, 32, 3), np.uint8)])
    mask = np.concatenate([mask, np.zeros((5, 2), bool)])
    kw = dict(max_new_tokens=8, stop_ids=[], pad_id=PAD)
    batched = generate(model, prompts, images, mask, **kw)
    assert batched == generate_uncached(model, prompts, images, mask, **kw)
    alone = [generate(model, prompts[i:i + 1], images[i:i + 1], mask[i:i + 1], **kw)[0]
             for i in range(8)]
    assert batched == alone
    assert len({tuple(r) for r in batched}) > 1  # rows differ: the test can fail


def test_cache_equals_no_cache(setup):
    cfg, model, prompts, images, mask = setup
    kw = dict(max_new_tokens=12, stop_ids=[], pad_id=PAD)
    cached = generate(model, prompts, images, mask, **kw)
    full = generate_uncached(model, prompts, images, mask, **kw)
    assert cached == full
    assert all(len(r) == 12 for r in cached)
    assert len({tuple(r) for r in cached}) == 3  # rows differ: the test can fail
    # The most left-padded row equals its prompt generated alone.
    alone = generate(model, prompts[1:2], images[1:2], mask[1:2], **kw)
    assert alone[0] == cached[1]


def test_sampling_and_stop_tokens(setup):
    cfg, model, prompts, images, mask = setup
    kw = dict(max_new_tokens=10, pad_id=PAD, temperature=1.0, rng=jax.random.key(7))
    a = generate(model, prompts, images, mask, stop_ids=[], **kw)
    b = generate_uncached(model, prompts, images, mask, stop_ids=[], **kw)
    assert a == b  # same key, same distribution, same draws
    stop = a[0][4]
    cut = generate(model, prompts, images, mask, stop_ids=[stop], **kw)
    assert cut[0] == a[0][:a[0].index(stop)]
    assert all(IMG not in row for row in a)


def test_placeholder_mismatch_in_prompt_is_an_error(setup):
    cfg, model, prompts, images, mask = setup
    with pytest.raises(PlaceholderMismatchError, match=r"prompts \[0, 2\].*by \[16, 32\]"):
        generate(model, prompts, images, np.zeros_like(mask), max_new_tokens=2, stop_ids=[], pad_id=PAD)


def test_float_pixels_are_refused(setup):
    """One image contract: generation takes the pipeline's uint8 pixels; floats are an error,
    not a silent "already normalised"."""
    cfg, model, prompts, images, mask = setup
    with pytest.raises(TypeError, match="uint8"):
        generate(model, prompts[:1], images[:1].astype(np.float32), mask[:1], max_new_tokens=2,
                 stop_ids=[], pad_id=PAD)


def test_sharded_evaluation_on_8_devices_equals_one_device():
    """The trainer's evaluation hook on a model FSDP-sharded over 8 devices: perplexity and
    generated text equal one device's, and generation sees the parameters sharded (none of the
    large ones replicated; nothing gathered)."""
    import json

    from tests.train.conftest import run_python

    p = run_python(["tests/eval/sharded_eval.py"], devices=8, timeout=900)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    one, eight = out["one"], out["fsdp8"]
    assert eight["gen"] == one["gen"] and len(set(one["gen"])) > 1
    assert eight["ppl"] == pytest.approx(one["ppl"], rel=1e-4)
    assert one["sharded"] == 0  # one device: nothing to split
    # Every matrix is split over fsdp; what stays whole are vectors the rules table maps to the
    # (size 1) tensor axis: the ViT's q/k/v/fc1 biases, 0.6% of the parameters here.
    assert eight["sharded"] > 25, eight
    assert all(p.rsplit("/", 1)[-1] in ("bias", "scale") for p in eight["replicated"]), eight
    assert eight["replicated_fraction"] < 0.01, eight
