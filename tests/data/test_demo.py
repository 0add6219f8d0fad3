"""The demo corpus: held-out images never reach training, labels and names are right."""

import io
import os
import re

import numpy as np
import pytest
from PIL import Image
from pydoc_data import topics as pydoc_topics
from sklearn.datasets import load_digits

from experiments.demo_cpu import get_config
from mm1_jax.data import demo, pipeline, records
from mm1_jax.data.kinds import KINDS
from mm1_jax.data.tokenizer import Tokenizer
from mm1_jax.startup import special_ids


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return demo.ensure_demo_data(str(tmp_path_factory.mktemp("demo") / "demo_data"))


def _label_of_png():
    """Encoded PNG -> the set of labels of the sklearn digits that encode to it."""
    digits = load_digits()
    table = {}
    for i, (im, y) in enumerate(zip(digits.images, digits.target)):
        table.setdefault(demo.digit_png(im), set()).add(int(y))
    return digits, table


def test_split_by_image_and_labels(demo_dir):
    meta = demo.load_heldout(demo_dir)
    digits, label_of = _label_of_png()
    held = meta["heldout_image_ids"]
    assert len(held) == round(0.2 * len(digits.images)) == 359
    assert meta["heldout_labels"] == digits.target[held].tolist()
    held_png = {demo.digit_png(digits.images[i]) for i in held}
    train_png = {demo.digit_png(im) for i, im in enumerate(digits.images) if i not in set(held)}
    seen = set()
    for kind in KINDS:
        for r in records.read_records(records.shard_paths(demo_dir, kind)):
            for s in r.segments:
                if "image" in s:
                    assert s["image"] in train_png  # never a held-out image (unless a twin)
                    seen.add(s["image"])
            if r.kind == "caption":
                (word,) = [w for w in demo.DIGIT_WORDS if re.search(rf"\b{w}\b", r.texts[0])]
                assert demo.DIGIT_WORDS.index(word) in label_of[r.segments[0]["image"]]
    assert seen == train_png  # every training image is used
    assert not (held_png - train_png) & seen

    # held-out captions: exactly the held-out images, each with its label's word
    caps = list(records.read_records(os.path.join(demo_dir, "heldout", "caption.array_record")))
    assert len(caps) == len(held)
    for r, y in zip(caps, meta["heldout_labels"]):
        assert r.texts == [f"A photo of a handwritten digit {demo.DIGIT_WORDS[y]}."]
    # the image decodes to 32x32 gray, dark ink on white, like the training images
    im = np.asarray(Image.open(io.BytesIO(caps[0].segments[0]["image"])))
    assert im.shape == (32, 32) and im.max() == 255


def test_named_episodes_are_consistent(demo_dir):
    meta = demo.load_heldout(demo_dir)
    _, label_of = _label_of_png()
    held_png = {demo.digit_png(im) for im in load_digits().images[meta["heldout_image_ids"]]}
    named = list(records.read_records(os.path.join(demo_dir, "heldout", "named.array_record")))
    assert len(named) == len(meta["heldout_named"]) == 200
    for r, info in zip(named, meta["heldout_named"]):
        assert r.id == info["id"]
        names = {int(d): n for d, n in info["names"].items()}
        assert len(set(names.values())) == len(names) == 2
        segs = r.segments[1:]
        assert len(segs) == 10  # 4 shots + the query, each an image then its sentence
        for img, txt in zip(segs[::2], segs[1::2]):
            assert img["image"] in held_png
            (label,) = label_of[img["image"]] & set(names)
            assert txt["text"] == f"This is a {names[label]}."
        assert segs[-1]["text"] == f"{meta['named_query']} {info['answer']}."
        assert names[info["query_label"]] == info["answer"]


def test_text_split_and_tokenizer(demo_dir):
    def paragraphs(recs):
        return {p for r in recs for t in r.texts for p in t.split("\n\n")}

    train = paragraphs(records.read_records(records.shard_paths(demo_dir, "text")))
    held = paragraphs(records.read_records(os.path.join(demo_dir, "heldout", "text.array_record")))
    held_text = [t for r in records.read_records(
        os.path.join(demo_dir, "heldout", "text.array_record")) for t in r.texts]
    assert not train & held  # no held-out paragraph is trained on
    every = {p for v in pydoc_topics.topics.values() for p in v.split("\n\n") if p.strip()}
    assert train | held == every  # and nothing is lost
    assert 0.05 < len(held) / len(every) < 0.15
    tok = Tokenizer(os.path.join(demo_dir, "tokenizer.model"))
    assert tok.vocab_size == 1024
    cfg = get_config()
    cfg.data.tokenizer = os.path.join(demo_dir, "tokenizer.model")
    assert special_ids(cfg).image == tok.image_id  # the demo decoder's 1024 covers it
    for t in held_text[:20]:
        assert tok.decode(tok.encode(t)) == t


def test_demo_config_pipeline_and_no_rebuild(demo_dir):
    stamp = os.path.getmtime(os.path.join(demo_dir, "tokenizer.model"))
    assert demo.ensure_demo_data(demo_dir) == demo_dir
    assert os.path.getmtime(os.path.join(demo_dir, "tokenizer.model")) == stamp
    cfg = get_config()
    cfg.data.dir, cfg.data.tokenizer = demo_dir, os.path.join(demo_dir, "tokenizer.model")
    it = pipeline.make_iterator(cfg, shard_index=0, shard_count=1)
    b = next(it)
    it.close()
    assert b.tokens.shape == (8, 256) and b.images.shape == (8, 6, 32, 32, 3)
    assert b.tokens.max() < cfg.model.decoder.vocab_size
