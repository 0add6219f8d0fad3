"""Readers for the benchmarks' own files: COCO captions JSON, VQAv2 questions + annotations JSON,
and the images they name, from a folder.

    captions:   {"images": [{"id", "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}
    VQAv2:      questions   {"questions": [{"question_id", "image_id", "question"}, ...]}
                annotations {"annotations": [{"question_id", "image_id", "answers": [{"answer"}, ...]}]}

An image is found by the `file_name` the captions file gives, else by its numeric id: any file in
the folder whose name ends in the id, zero-padded or not (COCO's `COCO_val2014_000000000042.jpg`,
or `42.png`). NoCaps and TextCaps ship COCO-format caption files; TextVQA, VizWiz, GQA and OK-VQA
answers can be written in the VQAv2 layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from mm1_jax.errors import EvalDataError  # also reachable as readers.EvalDataError


@dataclasses.dataclass(frozen=True)
class CaptionExample:
    image_id: int | str
    image_path: str
    references: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class VQAExample:
    question_id: int | str
    image_id: int | str
    image_path: str
    question: str
    answers: tuple[str, ...]  # the human answers (10 in VQAv2)


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise EvalDataError(f"{what} file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{what} file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise EvalDataError(f"{what} file {path}: expected a JSON object at the top level")
    return data


def _field(data: dict, key: str, path: str, what: str) -> list:
    if not isinstance(data.get(key), list):
        raise EvalDataError(f"{what} file {path} has no {key!r} list; is it the right file "
                            f"(keys found: {sorted(data)[:8]})?")
    return data[key]


class ImageFolder:
    """Finds image files by name or by the number their name ends in."""

    _ID = re.compile(r"(\d+)$")

    def __init__(self, directory: str):
        if not os.path.isdir(directory):
            raise EvalDataError(f"image folder {directory} does not exist")
        self.directory = directory
        self._by_id: dict[int, str] = {}
        for name in sorted(os.listdir(directory)):
            m = self._ID.search(os.path.splitext(name)[0])
            if m:
                self._by_id.setdefault(int(m.group(1)), name)

    def path(self, image_id, file_name: str | None = None) -> str:
        if file_name and os.path.exists(os.path.join(self.directory, file_name)):
            return os.path.join(self.directory, file_name)
        try:
            return os.path.join(self.directory, self._by_id[int(image_id)])
        except (KeyError, ValueError):
            raise EvalDataError(
                f"image {image_id!r}{f' ({file_name})' if file_name else ''} is not in "
                f"{self.directory}; point the image folder at the split the annotations "
                "describe (e.g. val2014 for VQAv2 val), or pass a limit to evaluate fewer") from None


def load_coco_captions(annotations: str, image_dir: str, limit: int | None = None
                       ) -> list[CaptionExample]:
    """COCO-format caption annotations -> one example per image (all its captions as references),
    in image id order; `limit` keeps the first n images."""
    data = _load_json(annotations, "captions")
    anns = _field(data, "annotations", annotations, "captions")
    refs: dict = {}
    for a in anns:
        try:
            refs.setdefault(a["image_id"], []).append(str(a["caption"]).strip())
        except (KeyError, TypeError):
            raise EvalDataError(f"captions file {annotations}: annotation {a!r} lacks "
                                "'image_id' or 'caption'") from None
    names = {im["id"]: im.get("file_name") for im in data.get("images", []) if "id" in im}
    folder = ImageFolder(image_dir)
    ids = sorted(refs, key=_sort_key)[:limit]
    return [CaptionExample(i, folder.path(i, names.get(i)), tuple(refs[i])) for i in ids]


def load_vqa(questions: str, annotations: str, image_dir: str, limit: int | None = None
             ) -> list[VQAExample]:
    """VQAv2 questions + annotations -> examples in question id order (`limit`: the first n)."""
    qs = _field(_load_json(questions, "VQA questions"), "questions", questions, "VQA questions")
    anns = _field(_load_json(annotations, "VQA annotations"), "annotations", annotations,
                  "VQA annotations")
    answers = {}
    for a in anns:
        try:
            answers[a["question_id"]] = tuple(str(x["answer"]) for x in a["answers"])
        except (KeyError, TypeError):
            raise EvalDataError(f"VQA annotations file {annotations}: {a!r} lacks 'question_id' "
                                "or 'answers' [{'answer': ...}]") from None
    folder = ImageFolder(image_dir)
    out = []
    for q in sorted(qs, key=lambda q: _sort_key(q.get("question_id"))):
        qid = q.get("question_id")
        if qid not in answers:
            raise EvalDataError(f"question {qid} of {questions} has no entry in {annotations}; "
                                "use the annotations file of the same split")
        out.append(VQAExample(qid, q["image_id"], folder.path(q["image_id"]), str(q["question"]),
                              answers[qid]))
        if limit is not None and len(out) >= limit:
            break
    return out


def _sort_key(x):
    return (0, x, "") if isinstance(x, int) else (1, 0, str(x))


def load_image(source: str | bytes, size: int, interpolation: str = "bicubic",
               resize_mode: str = "center_crop") -> np.ndarray:
    """A file path or encoded bytes -> uint8 [size, size, 3], decoded and resized as the data
    pipeline does; the model normalises the pixels (one image contract for training and
    evaluation)."""
    from mm1_jax.data.images import decode_resize

    if isinstance(source, str):
        with open(source, "rb") as f:
            source = f.read()
    return decode_resize(source, size, interpolation, resize_mode)
