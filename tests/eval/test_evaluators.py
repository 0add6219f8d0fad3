"""Evaluators from `config.evals` end to end on small files: scores computed from what the
generator returns, the query split never in the prompts, perplexity against a direct computation,
eval.json and TensorBoard, the evaluation command on a trainer checkpoint, and a training run on a
converted COCO-format corpus that evaluates every K steps."""

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

from mm1_jax.config import evaluator, load_config
from mm1_jax.data.tokenizer import train_tokenizer
from mm1_jax.errors import CheckpointError
from mm1_jax.eval import evaluators, inference
from mm1_jax.models.mm1 import MM1Model
from mm1_jax.writer import MetricsWriter
from tests.helpers import model_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("harness")
    texts = ["a red square on white", "a blue circle", "Question: what color? Short answer: red",
             "the quick brown fox jumps over the lazy dog"] * 30
    tok = train_tokenizer(texts, 300, str(d / "tok.model"))
    cfg = load_config(os.path.join(ROOT, "experiments", "demo_cpu.py"))
    cfg.data.tokenizer, cfg.data.dir = str(d / "tok.model"), None
    cfg.evals = {}
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
    cfg = cfg.copy_and_resolve_references()
    cfg.evals.vqav2 = evaluator("vqa", questions=str(d / "q.json"), annotations=str(d / "a.json"),
                                images=str(d / "images"), shots=(0, 2))
    cfg.evals.coco = evaluator("captioning", annotations=str(d / "c.json"),
                               images=str(d / "images"), shots=(0, 2))
    built = evaluators.from_config(cfg, tok)
    assert [e.name for e in built] == ["coco", "vqav2"]
    out = evaluators.run(built, None)
    query = built[1].query
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
    model = MM1Model(cfg.model, image_token_id=tok.image_id, rngs=nnx.Rngs(0))
    docs = [[tok.bos_id, *tok.encode(t), tok.eos_id]
            for t in ("the quick brown fox", "a blue circle and a red square on white " * 9)]
    assert len(docs[1]) > 64  # cut to seq_len
    ppl, n = inference.text_perplexity(model, docs, batch_size=4, seq_len=64,
                                       special=tok.special, image_size=32)
    nll, count = 0.0, 0
    for doc in docs:  # each document alone, unpadded
        tokens = np.asarray(doc[:64], np.int32)
        s = len(tokens)
        batch = model_batch(tokens[None], np.arange(s)[None], np.ones((1, s), np.int32),
                            np.zeros((1, 0, 32, 32, 3), np.uint8), np.zeros((1, 0), bool))
        logits, _ = model(batch, train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[0, :-1], tokens[1:])
        nll += float(ce.sum())
        count += s - 1
    assert n == count
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert 100 < ppl < 2000  # an untrained model over a ~300-piece vocabulary


def test_write_eval_json_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = {"demo/caption_acc_0shot": 0.925, "demo/text_ppl": 12.5}
    writer = MetricsWriter(str(tmp_path))
    path = writer.write_eval(400, results)
    writer.close()
    assert json.load(open(path)) == {"step": 400, **results}
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("demo/caption_acc_0shot")
    assert [(e.step, e.value) for e in events] == [(400, pytest.approx(0.925))]


def test_eval_command_restores_a_trainer_checkpoint_and_runs_the_config_evaluators(
        setup, tmp_path, monkeypatch):
    d, cfg, tok, _ = setup
    from mm1_jax.checkpoint import Checkpointer
    from mm1_jax.eval.restore import evaluate_checkpoint
    from mm1_jax.startup import start
    from tests.helpers import create_train_state

    cfg = cfg.copy_and_resolve_references()
    cfg.checkpoint.async_save = False
    cfg.evals.heldout = evaluator("perplexity", files=(str(d / "held.txt"),), batch_size=2)
    (d / "held.txt").write_text("the quick brown fox\n\na blue circle on white\n")
    state, _ = create_train_state(start(cfg, devices=jax.devices()[:1], corpus=False))
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), cfg)
    ckpt.save(7, state, None, force=True)
    ckpt.close()
    seen = []
    real = inference.text_perplexity

    def spy(model, *a, **k):
        seen.append(jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
        return real(model, *a, **k)

    monkeypatch.setattr(inference, "text_perplexity", spy)
    results, step = evaluate_checkpoint(cfg, str(tmp_path), devices=jax.devices()[:1])
    assert step == 7 and set(results) == {"heldout/ppl"} and 1 < results["heldout/ppl"] < 2000
    want = jax.tree.leaves(state.params)
    assert len(seen) == 1 and all(np.array_equal(a, b) for a, b in zip(want, seen[0]))
    with pytest.raises(CheckpointError, match=r"no checkpoint 3 in .*steps there: \[7\]"):
        evaluate_checkpoint(cfg, str(tmp_path), step=3, devices=jax.devices()[:1])


def test_training_on_a_converted_coco_corpus_evaluates_captioning_every_k_steps(tmp_path):
    """The trainer builds the captioning evaluator from config.evals and runs it every K steps
    and at the end, on a corpus converted from a COCO-format caption file (no demo corpus)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mm1_jax.data.convert.__main__ import main as convert
    from mm1_jax.train.loop import train

    img_dir = tmp_path / "val"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    coco = {"images": [], "annotations": []}
    lines = []
    for i in range(24):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        Image.new("RGB", (40, 40), color).save(img_dir / f"COCO_val_{i:012d}.jpg")
        caption = f"a square of color {['red', 'green', 'blue'][i % 3]}"
        coco["images"].append({"id": i, "file_name": f"COCO_val_{i:012d}.jpg"})
        coco["annotations"].append({"image_id": i, "caption": caption})
        lines.append(json.dumps({"image": f"COCO_val_{i:012d}.jpg", "caption": caption}))
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    corpus = tmp_path / "corpus"
    convert(["image_folder", f"--input={tmp_path / 'pairs.jsonl'}", f"--output={corpus}",
             f"--image_root={img_dir}", "--num_shards=1"])
    train_tokenizer([f"a square of color {c}" for c in ("red", "green", "blue")] * 20 + [
        "A photo of", "Question: Short answer:"] * 20, 290, str(tmp_path / "tok.model"))

    cfg = load_config(os.path.join(ROOT, "experiments", "demo_cpu.py"))
    cfg.data.dir, cfg.data.tokenizer = str(corpus), str(tmp_path / "tok.model")
    cfg.data.mixture.interleaved, cfg.data.mixture.text = 0.0, 0.0
    cfg.model.decoder.vocab_size = 304
    cfg.train.steps, cfg.train.seq_len, cfg.data.max_images = 6, 64, 2
    cfg.checkpoint.every = 6
    cfg.evals = {"coco": evaluator("captioning", annotations=str(tmp_path / "captions.json"),
                                   images=str(img_dir), every=3, shots=(0,), limit=6,
                                   max_new_tokens=4, support_fraction=0.0)}
    result = train(cfg, str(tmp_path / "run"))
    assert result.step == 6 and set(result.eval_metrics) == {"coco/cider_0shot"}
    assert json.load(open(tmp_path / "run" / "eval.json"))["step"] == 6
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("coco/cider_0shot")] == [3, 6]
