"""The evaluation tasks as seqio Tasks, for users coming from t5x (`pip install mm1_jax[seqio]`).

    from mm1_jax.eval import seqio_tasks
    names = seqio_tasks.register_tasks(tokenizer="tok.model", captions="captions_val2014.json",
                                       caption_images="val2014/", vqa_questions=..., ...)
    ds = seqio.get_mixture_or_task("mm1_coco_caption_4shot").get_dataset(
        {"inputs": 2048, "targets": 32}, split="validation", shuffle=False)

One Task per benchmark and shot count (`<prefix>_<name>_caption_<k>shot`,
`<prefix>_<name>_vqa_<k>shot`), built from the same files, prompts and support split as the
evaluators (mm1_jax.eval.evaluators). Features: `inputs`, the prompt as text with one `<image>` marker
per image, tokenised by `MM1Vocabulary` (our tokenizer; it never produces the image ids itself);
`images`, the image file paths in marker order; `targets`, the first reference caption or the most
common human answer. `postprocess_fn` hands the metric all references, so `metric_fns` compute
CIDEr and VQA accuracy exactly as mm1_jax.eval.metrics does.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from mm1_jax.data.tokenizer import Tokenizer
from mm1_jax.eval import fewshot, metrics, prompts, readers

IMAGE_MARKER = "<image>"


class MM1Vocabulary(seqio.Vocabulary):
    """seqio's view of mm1_jax.data.tokenizer.Tokenizer: same ids, same special tokens."""

    def __init__(self, path: str):
        self._tok = Tokenizer(path)
        self._path = path
        super().__init__(extra_ids=0)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tok

    @property
    def _base_vocab_size(self) -> int:
        return self._tok.vocab_size

    @property
    def eos_id(self) -> int:
        return self._tok.eos_id

    @property
    def pad_id(self) -> int:
        return self._tok.pad_id

    @property
    def unk_id(self) -> int:
        return self._tok._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._tok.bos_id

    def _encode(self, s: str) -> list[int]:
        return self._tok.encode(s)

    def _decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids if 0 <= int(i) < self._tok.vocab_size])

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def enc(x):
            return tf.constant(self._tok.encode(x.numpy().decode("utf-8")), tf.int32)

        out = tf.py_function(enc, [s], tf.int32)
        out.set_shape([None])
        return out

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def dec(x):
            return tf.constant(self._decode(x.numpy().tolist()))

        out = tf.py_function(dec, [ids], tf.string)
        out.set_shape([])
        return out

    def __eq__(self, other):
        return isinstance(other, MM1Vocabulary) and other._path == self._path

    def __hash__(self):
        return hash(self._path)


def _prompt_text(segments: list[dict]) -> tuple[str, list[str]]:
    """Segments -> (text with <image> markers, image paths): the markers split the text into the
    same segments `prompts.tokenize` would encode."""
    parts, images = [], []
    for seg in segments:
        if "text" in seg:
            parts.append(seg["text"])
        else:
            parts.append(IMAGE_MARKER)
            images.append(seg["image"])
    return " ".join(parts), images


def caption_examples(support, query, k: int, seed: int = 0):
    """Plain dicts (inputs, images, targets, references, id) of the k-shot captioning task."""
    for q in query:
        text, images = _prompt_text(fewshot.caption_prompt(support, q, k, seed))
        yield {"inputs": text, "images": images, "targets": q.references[0],
               "references": list(q.references), "id": str(q.image_id)}


def vqa_examples(support, query, k: int, seed: int = 0):
    """Plain dicts of the k-shot VQA task (targets: the most common human answer)."""
    for q in query:
        text, images = _prompt_text(fewshot.vqa_prompt(support, q, k, seed))
        yield {"inputs": text, "images": images, "targets": fewshot.most_common(q.answers),
               "references": list(q.answers), "id": str(q.question_id)}


def _source(make_examples) -> seqio.FunctionDataSource:
    signature = {"inputs": tf.TensorSpec([], tf.string), "images": tf.TensorSpec([None], tf.string),
                 "targets": tf.TensorSpec([], tf.string),
                 "references": tf.TensorSpec([None], tf.string), "id": tf.TensorSpec([], tf.string)}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files, seed  # one evaluation split, in file order
        return tf.data.Dataset.from_generator(make_examples, output_signature=signature)

    return seqio.FunctionDataSource(dataset_fn, splits=["validation"])


def _references(output, example=None, is_target: bool = False):
    """Targets become every reference, so the metric sees what the evaluators score against."""
    if is_target and example is not None:
        return [r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in example["references"]]
    return prompts.clean_answer(output)


def cider_metric(targets: list[list[str]], predictions: list[str]) -> dict[str, float]:
    """seqio metric: corpus CIDEr-D (mm1_jax.eval.metrics.cider)."""
    score, _ = metrics.cider(dict(enumerate(predictions)), dict(enumerate(targets)))
    return {"cider": score}


def vqa_metric(targets: list[list[str]], predictions: list[str]) -> dict[str, float]:
    """seqio metric: VQA accuracy (mm1_jax.eval.metrics.vqa_accuracy), a fraction."""
    acc, _ = metrics.vqa_accuracy(dict(enumerate(predictions)), dict(enumerate(targets)))
    return {"vqa_accuracy": acc}


def register_tasks(tokenizer: str, *, captions: str | None = None,
                   caption_images: str | None = None, caption_name: str = "coco",
                   vqa_questions: str | None = None, vqa_annotations: str | None = None,
                   vqa_images: str | None = None, vqa_name: str = "vqav2",
                   shots=(0, 4, 8), support_fraction: float = 0.5, limit: int | None = None,
                   prefix: str = "mm1") -> list[str]:
    """Registers one Task per (benchmark, shot count) given; returns their names. Registering a
    name again replaces the old Task."""
    vocab = MM1Vocabulary(tokenizer)
    features = {"inputs": seqio.Feature(vocab, add_eos=False),
                "targets": seqio.Feature(vocab, add_eos=True)}
    pre = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos]
    names = []

    def add(name, make, metric):
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(name, source=_source(make), output_features=features,
                               preprocessors=pre, postprocess_fn=_references, metric_fns=[metric])
        names.append(name)

    if captions:
        ex = readers.load_coco_captions(captions, caption_images, limit)
        sup, query = fewshot.split_for_shots(ex, lambda e: e.image_id, shots, support_fraction)
        for k in shots:
            add(f"{prefix}_{caption_name}_caption_{k}shot",
                lambda k=k, sup=sup, query=query: caption_examples(sup, query, k), cider_metric)
    if vqa_questions:
        ex = readers.load_vqa(vqa_questions, vqa_annotations, vqa_images, limit)
        sup, query = fewshot.split_for_shots(ex, lambda e: e.image_id, shots, support_fraction)
        for k in shots:
            add(f"{prefix}_{vqa_name}_vqa_{k}shot",
                lambda k=k, sup=sup, query=query: vqa_examples(sup, query, k), vqa_metric)
    if not names:
        raise ValueError("register_tasks: give captions (+ caption_images) and/or VQA files")
    return names
