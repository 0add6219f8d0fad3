"""seqio Tasks (the `seqio` extra; skipped without it): the vocabulary wrapper gives our tokenizer's
ids on both the Python and the TensorFlow path, the tasks' examples are the harness's prompts,
and the metric functions give the harness's numbers."""

import io
import json

import numpy as np
import pytest
from PIL import Image

seqio = pytest.importorskip("seqio")

from mm1_jax.data.tokenizer import train_tokenizer  # noqa: E402
from mm1_jax.eval import fewshot, metrics, prompts, readers, seqio_tasks  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("seqio")
    texts = ["A photo of a red square", "Question: what color is it? Short answer: red"] * 40
    tok_path = str(d / "tok.model")
    train_tokenizer(texts, 290, tok_path)
    (d / "img").mkdir()
    for i in range(10):
        out = io.BytesIO()
        Image.new("RGB", (16, 16), (25 * i, 0, 0)).save(out, format="PNG")
        (d / "img" / f"{i}.png").write_bytes(out.getvalue())
    caps = {"annotations": [{"image_id": i, "caption": f"A photo of square {i}."} for i in range(10)]
            + [{"image_id": i, "caption": f"square number {i}"} for i in range(10)]}
    (d / "c.json").write_text(json.dumps(caps))
    qs = {"questions": [{"question_id": 50 + i, "image_id": i, "question": "what color?"}
                        for i in range(10)]}
    anns = {"annotations": [{"question_id": 50 + i, "image_id": i,
                             "answers": [{"answer": a} for a in ["red"] * (i % 5) + ["dark"] * (10 - i % 5)]}
                            for i in range(10)]}
    (d / "q.json").write_text(json.dumps(qs))
    (d / "a.json").write_text(json.dumps(anns))
    return d, tok_path


def test_vocabulary_matches_tokenizer(files):
    _, tok_path = files
    vocab = seqio_tasks.MM1Vocabulary(tok_path)
    tok = vocab.tokenizer
    text = "Question: what color is it? Short answer: red"
    assert vocab.encode(text) == tok.encode(text)
    assert vocab.encode_tf(text).numpy().tolist() == tok.encode(text)
    assert vocab.decode_tf(np.array(tok.encode(text), np.int32)).numpy().decode() == text
    assert (vocab.eos_id, vocab.pad_id, vocab.vocab_size) == (tok.eos_id, tok.pad_id, tok.vocab_size)


def test_tasks_hold_the_harness_prompts_and_metrics(files):
    d, tok_path = files
    names = seqio_tasks.register_tasks(
        tok_path, captions=str(d / "c.json"), caption_images=str(d / "img"),
        vqa_questions=str(d / "q.json"), vqa_annotations=str(d / "a.json"),
        vqa_images=str(d / "img"), shots=(0, 2), support_fraction=0.5)
    assert names == ["mm1_coco_caption_0shot", "mm1_coco_caption_2shot",
                     "mm1_vqav2_vqa_0shot", "mm1_vqav2_vqa_2shot"]
    task = seqio.get_mixture_or_task("mm1_vqav2_vqa_2shot")
    ds = task.get_dataset({"inputs": 256, "targets": 8}, split="validation", shuffle=False)
    got = list(ds.as_numpy_iterator())

    ex = readers.load_vqa(str(d / "q.json"), str(d / "a.json"), str(d / "img"))
    support, query = fewshot.split_for_shots(ex, lambda e: e.image_id, (0, 2), 0.5)
    assert len(got) == len(query) > 0
    vocab = task.output_features["inputs"].vocabulary
    for g, q in zip(got, query):
        text = g["inputs_pretokenized"].decode()
        assert text.count(seqio_tasks.IMAGE_MARKER) == 3 and text.endswith(
            "<image> Question: what color? Short answer:")
        assert [p.decode() for p in g["images"]][-1] == q.image_path
        assert g["targets"].tolist() == vocab.encode(max(q.answers, key=q.answers.count)) + [vocab.eos_id]

    # the metric sees every human answer: "red" scores as the harness's vqa_accuracy does
    targets = [task.postprocess_fn(None, example=g, is_target=True) for g in got]
    preds = [task.postprocess_fn("red\nQuestion:", example=g) for g in got]
    expected, _ = metrics.vqa_accuracy({q.question_id: "red" for q in query},
                                       {q.question_id: q.answers for q in query})
    assert task.metric_fns[0](targets, preds) == {"vqa_accuracy": pytest.approx(expected)}
    assert 0 < expected < 1

    cap = seqio.get_mixture_or_task("mm1_coco_caption_0shot")
    rows = list(cap.get_dataset({"inputs": 64, "targets": 16}, split="validation",
                                shuffle=False).as_numpy_iterator())
    assert len(rows) == len(query)  # 0-shot is scored on the same query images
    refs = [cap.postprocess_fn(None, example=r, is_target=True) for r in rows]
    preds = ["a photo of square 3"] * len(rows)
    want, _ = metrics.cider(dict(enumerate(preds)), dict(enumerate(refs)))
    assert cap.metric_fns[0](refs, preds)["cider"] == pytest.approx(want)
    assert prompts.CAPTION_PROMPT.replace("{IMAGE}", "<image>") == rows[0]["inputs_pretokenized"].decode()
