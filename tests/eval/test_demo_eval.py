"""The demo evaluation's prompts are the held-out documents cut where the answer starts, and its
accuracies count exactly the right answers."""

import numpy as np
import pytest

from mm1_jax.config import load_config
from mm1_jax.data import demo as demo_data
from mm1_jax.data.examples import layout
from mm1_jax.data.records import read_records
from mm1_jax.data.tokenizer import Tokenizer
from mm1_jax.eval import demo, inference
from mm1_jax.eval.evaluators import Context


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("demo"))
    demo_data.build(d)
    cfg = load_config("experiments/demo_cpu.py")
    cfg.data.dir, cfg.data.tokenizer = d, f"{d}/tokenizer.model"
    tok = Tokenizer(cfg.data.tokenizer)
    return d, cfg, tok, Context.from_config(cfg, tok)


def test_prompts_are_heldout_documents_cut_before_the_answer(corpus):
    d, cfg, tok, ctx = corpus
    t = cfg.model.connector.num_tokens
    items, words = demo.caption_items(ctx.tokens_per_image, tok, d, limit=20)
    for item, word, rec in zip(items, words, read_records(f"{d}/heldout/caption.array_record")):
        full, _ = layout(rec, tok, t)
        assert item.tokens == full[:len(item.tokens)]
        assert tok.decode(full[len(item.tokens):]).strip() == f"a handwritten digit {word}."
    items, names, chance = demo.named_items(ctx.tokens_per_image, tok, d, limit=20)
    for item, name, rec in zip(items, names, read_records(f"{d}/heldout/named.array_record")):
        full, _ = layout(rec, tok, t)
        assert item.tokens == full[:len(item.tokens)] and len(item.images) == 5
        assert tok.decode(full[len(item.tokens):]).strip() == f"{name}."
    assert chance == [0.5] * 20


def test_accuracies_count_right_answers(corpus, monkeypatch):
    d, cfg, tok, ctx = corpus
    _, words = demo.caption_items(ctx.tokens_per_image, tok, d)
    _, names, _ = demo.named_items(ctx.tokens_per_image, tok, d)

    def fake_generate(model, tok_, items, load_image, **kw):
        # right for every third caption (one written with another digit first: wrong), and
        # for the first 50 episodes
        if len(items[0].images) == 1:
            return [f" a handwritten digit {w}." if i % 3 == 0 else
                    f" a {demo_data.DIGIT_WORDS[(demo_data.DIGIT_WORDS.index(w) + 1) % 10]} or {w}."
                    for i, w in enumerate(words)]
        return [f" {n}." if i < 50 else " dax." for i, n in enumerate(names)]

    monkeypatch.setattr(inference, "generate_texts", fake_generate)
    monkeypatch.setattr(inference, "text_perplexity", lambda *a, **k: (12.5, 100))
    out = {f"demo/{k}": v for k, v in demo.evaluate_demo(None, ctx, d).items()}
    assert out["demo/caption_acc_0shot"] == pytest.approx(np.ceil(len(words) / 3) / len(words))
    assert out["demo/named_acc_4shot"] == pytest.approx((50 + names[50:].count("dax")) / len(names))
    assert out["demo/named_chance"] == 0.5 and out["demo/text_ppl"] == 12.5
    assert "| zero-shot digit captioning accuracy |" in demo.format_table(out)
