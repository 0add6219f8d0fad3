"""Prompts tokenise as the training data does; few-shot examples never show the query's image;
the readers parse COCO captions and VQAv2 files and find images by name or id."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from mm1_jax.data import demo as demo_data
from mm1_jax.data.examples import layout
from mm1_jax.data.records import Record, image_segment, text_segment
from mm1_jax.data.tokenizer import train_tokenizer
from mm1_jax.eval import fewshot, prompts, readers

T = 4  # image tokens per image


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [t.format(word=w) for t in demo_data.CAPTION_TEMPLATES for w in demo_data.DIGIT_WORDS]
    texts += ["Question: what color is the bus? Short answer: red", "This is a dax. This is a wug."]
    return train_tokenizer(texts * 20, 310, str(tmp_path_factory.mktemp("tok") / "t.model"))


def test_caption_prompt_is_a_prefix_of_a_training_caption(tok):
    png = demo_data.digit_png(np.eye(8) * 16)
    record = Record("caption", "x", "t", [image_segment(png, "png", 32, 32),
                                          text_segment("A photo of a handwritten digit seven.")])
    train_ids, _ = layout(record, tok, T)
    ids, images = prompts.tokenize(prompts.render(prompts.CAPTION_PROMPT, png), tok, T)
    assert images == [png]
    assert ids == train_ids[:len(ids)]
    assert tok.decode(train_ids[len(ids):]).strip() == "a handwritten digit seven."


def test_vqa_few_shot_prompt_layout(tok):
    shots = [("img1", "red", {"QUESTION": "what color is the bus?"}),
             ("img2", "A photo of two", {"QUESTION": "how many {dogs}?"})]
    segs = prompts.few_shot(prompts.VQA_PROMPT, shots, "query", QUESTION="what  is it?")
    assert [s.get("image") for s in segs if "image" in s] == ["img1", "img2", "query"]
    assert [s["text"] for s in segs if "text" in s] == [
        "Question: what color is the bus? Short answer: red",
        "Question: how many {dogs}? Short answer: A photo of two",
        "Question: what is it? Short answer:"]
    ids, images = prompts.tokenize(segs, tok, T)
    assert ids.count(tok.image_id) == 3 * T and images == ["img1", "img2", "query"]
    assert ids[0] == tok.bos_id and tok.eos_id not in ids
    caption = prompts.few_shot(prompts.CAPTION_PROMPT, [("i", "A photo of a cat.", {})], "q")
    assert caption[1]["text"] == "A photo of a cat."  # the prompt is not repeated


def test_support_split_and_shot_choice():
    examples = [(q, q // 3) for q in range(300)]  # (question id, image id): 3 questions per image
    support, query = fewshot.split_support(examples, lambda e: e[1], 0.5, seed=1)
    assert {e[1] for e in support}.isdisjoint({e[1] for e in query})
    assert 100 < len(support) < 200
    for q in query[:20]:
        shots = fewshot.choose_shots(support, 8, q[0], q[1], lambda e: e[1], seed=1)
        assert len(set(shots)) == 8 and all(s[1] != q[1] for s in shots)
        assert shots == fewshot.choose_shots(support, 8, q[0], q[1], lambda e: e[1], seed=1)
    # the query's own image is excluded even when it is in the pool
    pool = [(0, 7), (1, 7), (2, 8)]
    assert fewshot.choose_shots(pool, 1, 5, 7, lambda e: e[1]) == [(2, 8)]
    with pytest.raises(ValueError, match="needs at least 2 support examples"):
        fewshot.choose_shots(pool, 2, 5, 7, lambda e: e[1])


def _png(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, format="PNG")
    return out.getvalue()


def test_coco_and_vqa_readers(tmp_path):
    img_dir = tmp_path / "val2014"
    img_dir.mkdir()
    (img_dir / "COCO_val2014_000000000042.png").write_bytes(_png((255, 0, 0)))
    (img_dir / "7.png").write_bytes(_png((0, 0, 255)))
    caps = {"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.png"}, {"id": 7}],
            "annotations": [{"image_id": 42, "id": 1, "caption": "A red square. "},
                            {"image_id": 7, "id": 2, "caption": "Blue."},
                            {"image_id": 42, "id": 3, "caption": "Red."}]}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    ex = readers.load_coco_captions(str(tmp_path / "caps.json"), str(img_dir))
    assert [(e.image_id, os.path.basename(e.image_path), e.references) for e in ex] == [
        (7, "7.png", ("Blue.",)), (42, "COCO_val2014_000000000042.png", ("A red square.", "Red."))]

    qs = {"questions": [{"question_id": 4201, "image_id": 42, "question": "What color?"},
                        {"question_id": 701, "image_id": 7, "question": "Shape?"}]}
    anns = {"annotations": [{"question_id": q, "image_id": i,
                             "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(ans)]}
                            for q, i, ans in [(4201, 42, ["red"] * 10), (701, 7, ["square"] * 10)]]}
    (tmp_path / "q.json").write_text(json.dumps(qs))
    (tmp_path / "a.json").write_text(json.dumps(anns))
    vqa = readers.load_vqa(str(tmp_path / "q.json"), str(tmp_path / "a.json"), str(img_dir), limit=1)
    assert [(e.question_id, e.image_id, e.question, e.answers) for e in vqa] == [
        (701, 7, "Shape?", ("square",) * 10)]

    pixels = readers.load_image(vqa[0].image_path, 16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8  # the model normalises
    np.testing.assert_array_equal(pixels[8, 8], [0, 0, 255])

    (tmp_path / "missing.json").write_text(json.dumps({"annotations": [{"image_id": 9, "caption": "x"}]}))
    with pytest.raises(readers.EvalDataError, match="image 9 is not in .*val2014"):
        readers.load_coco_captions(str(tmp_path / "missing.json"), str(img_dir))
    with pytest.raises(readers.EvalDataError, match="has no 'questions' list"):
        readers.load_vqa(str(tmp_path / "a.json"), str(tmp_path / "a.json"), str(img_dir))
