"""The harness end to end on small files: scores computed from what the generator returns, the
query split never in the prompts, perplexity against a direct computation, eval.json and
TensorBoard, and a model restored from a trainer checkpoint."""

import io
import json
import math
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image

from mm1_jax.config import load_config
from mm1_jax.data.tokenizer import train_tokenizer
from mm1_jax.eval import harness, inference
from mm1_jax.models.mm1 import MM1Model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("harness")
    texts = ["a red square on white", "a blue circle", "Question: what color? Short answer: red",
             "the quick brown fox jumps over the lazy dog"] * 30
    tok = train_tokenizer(texts, 300, str(d / "tok.model"))
    cfg = load_config(os.path.join(ROOT, "experiments", "demo_cpu.py"))
    cfg.data.tokenizer, cfg.data.dir = str(d / "tok.model"), None
    cfg.train.build_demo_data = False
    cfg.model.image_token_id = tok.image_id
    cfg.train.seq_len = 64
    cfg.data.max_images = 2
    img_dir = d / "images"
    img_dir.mkdir()
    colors = {i: (i * 20 % 256, 255 - i * 20 % 256, 128) for i in range(12)}
    for i, c in colors.items():
        out = io.BytesIO()
        Image.new("RGB", (32, 32), c).save(out, format="PNG")
        (img_dir / f"{i:06d}.png").write_bytes(out.getvalue())
    qs = {"questions": [{"question_id": 100 + i, "image_id": i, "question": f"what is {i}?"}
                        for i in range(12)]}
    answers = {i: ["red"] * (i % 4) + ["blue"] * (10 - i % 4) for i in range(12)}
    anns = {"annotations": [{"question_id": 100 + i, "image_id": i,
                             "answers": [{"answer": a} for a in answers[i]]} for i in range(12)]}
    (d / "q.json").write_text(json.dumps(qs))
    (d / "a.json").write_text(json.dumps(anns))
    caps = {"annotations": [{"image_id": i, "caption": c} for i in range(12)
                            for c in (f"a square of color {i}", f"color number {i} square")]}
    (d / "c.json").write_text(json.dumps(caps))
    return d, cfg, tok, answers


def test_vqa_and_caption_scores_from_generated_text(setup, monkeypatch):
    d, cfg, tok, answers = setup
    seen = []

    def fake_generate(model, tok_, items, load_image, **kw):
        seen.extend(items)
        return ["red\nQuestion: next" if "Question" in tok_.decode(it.tokens) else
                " a square of color 3." for it in items]

    monkeypatch.setattr(inference, "generate_texts", fake_generate)
    tasks = harness.EvalTasks(vqa_questions=str(d / "q.json"), vqa_annotations=str(d / "a.json"),
                              vqa_images=str(d / "images"), caption_annotations=str(d / "c.json"),
                              caption_images=str(d / "images"), shots=(0, 2), demo=False)
    out = harness.run_eval(None, cfg, tasks)
    support, query = harness._split(harness.readers.load_vqa(
        str(d / "q.json"), str(d / "a.json"), str(d / "images")), tasks)
    # "red" against i % 4 "red" answers: min(matches_without_one / 3, 1) averaged over 10
    def acc(n):
        return sum(min((n - (j < n)) / 3, 1) for j in range(10)) / 10
    expected = np.mean([acc(q.image_id % 4) for q in query])
    assert out["vqav2/accuracy_0shot"] == pytest.approx(expected)
    assert out["vqav2/accuracy_2shot"] == pytest.approx(expected)
    assert set(out) == {"vqav2/accuracy_0shot", "vqav2/accuracy_2shot", "coco/cider_0shot",
                        "coco/cider_2shot"}
    # the constant caption matches image 3's references only
    assert 0 < out["coco/cider_0shot"] == out["coco/cider_2shot"]
    query_paths = {q.image_path for q in query}
    for it in seen:
        assert it.tokens.count(tok.image_id) == len(it.images) * cfg.model.connector.num_tokens
        assert it.images[-1] in query_paths and not set(it.images[:-1]) & query_paths


def test_text_perplexity_matches_direct_cross_entropy(setup):
    d, cfg, tok, _ = setup
    model = MM1Model(cfg, rngs=nnx.Rngs(0))
    docs = [[tok.bos_id, *tok.encode(t), tok.eos_id]
            for t in ("the quick brown fox", "a blue circle and a red square on white " * 9)]
    assert len(docs[1]) > 64  # cut to seq_len
    ppl, n = inference.text_perplexity(model, docs, batch_size=4, seq_len=64, pad_id=tok.pad_id,
                                       image_size=32)
    nll, count = 0.0, 0
    for doc in docs:  # each document alone, unpadded
        tokens = np.asarray(doc[:64], np.int32)
        s = len(tokens)
        batch = {"tokens": tokens[None], "positions": np.arange(s)[None],
                 "segment_ids": np.ones((1, s), np.int32),
                 "images": np.zeros((1, 0, 32, 32, 3), np.float32),
                 "image_mask": np.zeros((1, 0), bool)}
        logits, _ = model(batch, train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[0, :-1], tokens[1:])
        nll += float(ce.sum())
        count += s - 1
    assert n == count
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert 100 < ppl < 2000  # an untrained model over a ~300-piece vocabulary


def test_write_results_json_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = {"demo/caption_acc_0shot": 0.925, "demo/text_ppl": 12.5}
    path = harness.write_results(str(tmp_path), 400, results)
    assert json.load(open(path)) == {"step": 400, **results}
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("demo/caption_acc_0shot")
    assert [(e.step, e.value) for e in events] == [(400, pytest.approx(0.925))]


def test_load_model_restores_trainer_checkpoint(setup, tmp_path):
    _, cfg, _, _ = setup
    from mm1_jax.train import mesh as mesh_lib
    from mm1_jax.train.checkpoint import Checkpointer
    from mm1_jax.train.state import create_train_state

    cfg = cfg.copy_and_resolve_references()
    cfg.checkpoint.async_save = False
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:1])
    state, _ = create_train_state(cfg, mesh)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), cfg)
    ckpt.save(7, state, None, force=True)
    ckpt.close()
    model, step, _ = harness.load_model(cfg, str(tmp_path), devices=jax.devices()[:1])
    assert step == 7
    want = jax.tree.leaves(state.params)
    got = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert len(want) == len(got) and all(np.array_equal(a, b) for a, b in zip(want, got))
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint 3 .*steps there: \[7\]"):
        harness.load_model(cfg, str(tmp_path), step=3, devices=jax.devices()[:1])
