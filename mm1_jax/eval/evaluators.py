"""Evaluators built from `config.evals` (big_vision's pattern): captioning (CIDEr) and VQA (VQA
accuracy) at 0/4/8 shots, text perplexity, and the demo metrics.

Each `config.evals` entry names one evaluator (`mm1_jax.config.evaluator()` makes an entry with
every field); the trainer builds them with `from_config` and calls the due ones every `every`
steps and at the end, and `python -m mm1_jax.eval` runs the same ones on a restored checkpoint.
An evaluator reads its files once, when built, and then maps a model to `{metric: value}` with
metric names `<entry name>/<metric>`: `coco/cider_4shot`, `vqav2/accuracy_0shot` (a fraction;
MM1's tables show percentages), `heldout/ppl`, and the demo's `demo/caption_acc_0shot`, ...
Nothing here imports the trainer.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from mm1_jax.data.tokenizer import Tokenizer
from mm1_jax.eval import demo, fewshot, inference, metrics, prompts, readers


@dataclasses.dataclass(frozen=True)
class Context:
    """What every evaluator needs besides its own entry: the tokenizer and the model's input
    format (image size and preprocessing, tokens per image, row length)."""

    tok: Tokenizer
    image_size: int
    tokens_per_image: int
    seq_len: int
    interpolation: str = "bicubic"
    resize_mode: str = "center_crop"

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, tok: Tokenizer) -> "Context":
        return cls(tok=tok, image_size=cfg.model.vision.image_size,
                   tokens_per_image=cfg.model.connector.num_tokens, seq_len=cfg.train.seq_len,
                   interpolation=cfg.data.interpolation, resize_mode=cfg.data.resize_mode)

    def load_image(self, source):
        return readers.load_image(source, self.image_size, self.interpolation, self.resize_mode)


class Evaluator:
    """One `config.evals` entry: `name`, its settings `e`, and `__call__(model) -> metrics`."""

    def __init__(self, name: str, e: ml_collections.ConfigDict, ctx: Context):
        self.name, self.e, self.ctx = name, e, ctx

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the trainer runs this evaluator after `step` of `total_steps`."""
        if step == total_steps:
            return bool(self.e.at_end) or bool(self.e.every and step % self.e.every == 0)
        return bool(self.e.every) and step % self.e.every == 0

    def __call__(self, model) -> dict[str, float]:
        raise NotImplementedError

    def _continuations(self, model, segments: list[list[dict]]) -> list[str]:
        """Greedy continuations of prompts given as segments, cut where a new example starts."""
        c = self.ctx
        items = [inference.PromptItem(*prompts.tokenize(s, c.tok, c.tokens_per_image))
                 for s in segments]
        texts = inference.generate_texts(model, c.tok, items, c.load_image,
                                         max_new_tokens=self.e.max_new_tokens,
                                         batch_size=self.e.batch_size, image_size=c.image_size)
        return [prompts.clean_answer(x) for x in texts]

    def _per_shot(self, model, prompt) -> dict[int, list[str]]:
        """{k: the continuation of every query's k-shot prompt}, `prompt(support, query, k,
        seed)` building one prompt (fewshot.caption_prompt / vqa_prompt)."""
        return {k: self._continuations(model, [prompt(self.support, q, k, self.e.seed)
                                               for q in self.query])
                for k in self.e.shots}

    def _split(self, examples):
        return fewshot.split_for_shots(examples, lambda x: x.image_id, tuple(self.e.shots),
                                       self.e.support_fraction, self.e.seed)


class Captioning(Evaluator):
    """CIDEr of the captions generated after MM1's "{IMAGE} A photo of" at each shot count, on
    the query part of a COCO-format captions file (NoCaps and TextCaps ship the same format)."""

    def __init__(self, name, e, ctx):
        super().__init__(name, e, ctx)
        self.support, self.query = self._split(
            readers.load_coco_captions(e.annotations, e.images, e.limit))

    def __call__(self, model) -> dict[str, float]:
        refs = {q.image_id: q.references for q in self.query}
        return {f"{self.name}/cider_{k}shot":
                metrics.cider({q.image_id: x for q, x in zip(self.query, texts)}, refs)[0]
                for k, texts in self._per_shot(model, fewshot.caption_prompt).items()}


class VQA(Evaluator):
    """VQA accuracy of the short answers generated after MM1's "{IMAGE} Question: {QUESTION}
    Short answer:" at each shot count, on the query part of VQAv2-format files."""

    def __init__(self, name, e, ctx):
        super().__init__(name, e, ctx)
        self.support, self.query = self._split(
            readers.load_vqa(e.questions, e.annotations, e.images, e.limit))

    def __call__(self, model) -> dict[str, float]:
        answers = {q.question_id: q.answers for q in self.query}
        return {f"{self.name}/accuracy_{k}shot":
                metrics.vqa_accuracy({q.question_id: x for q, x in zip(self.query, texts)},
                                     answers)[0]
                for k, texts in self._per_shot(model, fewshot.vqa_prompt).items()}


class Perplexity(Evaluator):
    """`<name>/ppl`: perplexity of held-out text (record shards or directories, .jsonl with a
    "text" field, plain text files), each document cut to train.seq_len tokens."""

    def __init__(self, name, e, ctx):
        super().__init__(name, e, ctx)
        from mm1_jax.data.tokenizer import corpus_texts

        texts = [t for t in corpus_texts(list(e.files)) if t.strip()][:e.limit]
        tok = ctx.tok
        self.docs = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts]  # as examples.layout

    def __call__(self, model) -> dict[str, float]:
        ppl, _ = inference.text_perplexity(model, self.docs, batch_size=self.e.batch_size,
                                           seq_len=self.ctx.seq_len, special=self.ctx.tok.special,
                                           image_size=self.ctx.image_size)
        return {f"{self.name}/ppl": ppl}


class Demo(Evaluator):
    """The demo metrics on the held-out part of the embedded demo corpus (mm1_jax.eval.demo)."""

    def __init__(self, name, e, ctx, data_dir: str):
        super().__init__(name, e, ctx)
        self.dir = e.dir or data_dir
        if not self.dir or not os.path.exists(os.path.join(self.dir, "heldout.json")):
            raise readers.EvalDataError(
                f"config.evals.{name}.dir: {self.dir!r} is not a demo corpus; build one with "
                "`python -m mm1_jax.data.demo --output=DIR`")

    def __call__(self, model) -> dict[str, float]:
        results = demo.evaluate_demo(model, self.ctx, self.dir,
                                     batch_size=max(self.e.batch_size, 32), limit=self.e.limit)
        return {f"{self.name}/{k}": v for k, v in results.items()}


TYPES = {"captioning": Captioning, "vqa": VQA, "perplexity": Perplexity, "demo": Demo}


def from_config(cfg: ml_collections.ConfigDict, tok: Tokenizer | None = None) -> list[Evaluator]:
    """The evaluators of `cfg.evals` (validated by config.validate), in name order; `tok`
    defaults to `cfg.data.tokenizer`'s."""
    if not cfg.evals:
        return []
    tok = tok or Tokenizer(cfg.data.tokenizer)  # set whenever evals are (config.validate)
    ctx = Context.from_config(cfg, tok)
    out = []
    for name in sorted(cfg.evals):
        e = cfg.evals[name]
        kind = TYPES[e.type]
        out.append(kind(name, e, ctx, cfg.data.dir) if kind is Demo else kind(name, e, ctx))
    return out


def run(evaluators: list[Evaluator], model) -> dict[str, float]:
    """Every evaluator of `evaluators` on `model`; {metric: value}."""
    out: dict[str, float] = {}
    for ev in evaluators:
        out.update(ev(model))
    return out
