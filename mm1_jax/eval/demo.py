"""The demo evaluation: what the tiny model learned from the embedded corpus (mm1_jax.data.demo),
measured on held-out material only.

Metric names below are those of the evaluator entry named `demo` (experiments/demo_cpu.py);
the functions here return them without the prefix.

    demo/caption_acc_0shot  held-out digit images, MM1's `{IMAGE} A photo of`: the fraction whose
                            generated caption names the right digit (its first digit word).
    demo/named_acc_4shot    held-out "named" episodes: 4 images given made-up names in context,
                            then a query image and "This is a"; the fraction whose generated
                            first word is the query's name. Names are drawn afresh per episode,
                            so only reading the context can solve it.
    demo/named_chance       what reading the context without the query image achieves: the query
                            digit is drawn uniformly from the episode's n_ways digits, so choosing
                            any of the named digits is right 1 / n_ways of the time.
    demo/text_ppl           perplexity of held-out Python-documentation paragraphs.
"""

from __future__ import annotations

import os
import re

from mm1_jax.data import records
from mm1_jax.data import demo as demo_data
from mm1_jax.data.examples import layout
from mm1_jax.eval import inference, prompts, readers

_DIGIT = re.compile(r"\b(" + "|".join(demo_data.DIGIT_WORDS) + r")\b")
_WORD = re.compile(r"[A-Za-z]+")


def first_digit_word(text: str) -> str | None:
    m = _DIGIT.search(text.lower())
    return m.group(1) if m else None


def first_word(text: str) -> str | None:
    m = _WORD.search(text)
    return m.group(0).lower() if m else None


def _heldout(data_dir: str, name: str) -> list[records.Record]:
    path = os.path.join(data_dir, "heldout", f"{name}.array_record")
    if not os.path.exists(path):
        raise readers.EvalDataError(
            f"{path} does not exist: {data_dir} is not a complete demo corpus; build it with "
            f"`python -m mm1_jax.data.demo --output={data_dir}`")
    return list(records.read_records(path))


def caption_items(tokens_per_image: int, tok, data_dir: str, limit: int | None = None):
    """(prompt items, digit words) of the held-out captioning set (one per held-out image)."""
    meta = demo_data.load_heldout(data_dir)
    label = dict(zip(meta["heldout_image_ids"], meta["heldout_labels"]))
    items, words = [], []
    for r in _heldout(data_dir, "caption")[:limit]:
        image = next(s["image"] for s in r.segments if "image" in s)
        ids, imgs = prompts.tokenize(prompts.render(prompts.CAPTION_PROMPT, image), tok,
                                     tokens_per_image)
        items.append(inference.PromptItem(ids, imgs))
        words.append(demo_data.DIGIT_WORDS[label[int(r.id.split("-")[1])]])  # id digit-<i>-t<k>
    return items, words


def named_items(tokens_per_image: int, tok, data_dir: str, limit: int | None = None):
    """(prompt items, answers, chance per episode) of the held-out named episodes: each episode
    up to its last "This is a", the name cut off."""
    answers = {a["id"]: a for a in demo_data.load_heldout(data_dir)["heldout_named"]}
    items, names, chance = [], [], []
    for r in _heldout(data_dir, "named")[:limit]:
        info = answers[r.id]
        segments = list(r.segments[:-1]) + [{"text": demo_data.NAMED_QUERY}]
        if r.segments[-1].get("text") != demo_data.NAMED_SHOT.format(name=info["answer"]):
            raise readers.EvalDataError(f"named episode {r.id} does not end with its answer "
                                        f"{info['answer']!r}; rebuild the demo corpus")
        ids, imgs = prompts.tokenize(segments, tok, tokens_per_image)
        items.append(inference.PromptItem(ids, imgs))
        names.append(info["answer"])
        chance.append(1.0 / len(info["names"]))
    return items, names, chance


def caption_demo_images(model, ctx, data_dir: str, n: int = 16, batch_size: int = 16):
    """[(png bytes, digit word, generated caption)] for the first n held-out images (notebooks).
    ctx: mm1_jax.eval.evaluators.Context."""
    items, words = caption_items(ctx.tokens_per_image, ctx.tok, data_dir, limit=n)
    texts = inference.generate_texts(model, ctx.tok, items, ctx.load_image, max_new_tokens=10,
                                     batch_size=min(batch_size, n), image_size=ctx.image_size)
    return [(it.images[0], w, t) for it, w, t in zip(items, words, texts)]


def evaluate_demo(model, ctx, data_dir: str, *, batch_size: int = 32,
                  limit: int | None = None) -> dict[str, float]:
    """The four demo metrics (caption_acc_0shot, named_acc_4shot, named_chance, text_ppl) of `model` on the held-out part of the demo corpus.

    ctx: mm1_jax.eval.evaluators.Context (tokenizer, image size, tokens per image, row length);
    limit: score only the first n items of each set (quick checks; the reported figures use all
    of them).
    """
    tok, size = ctx.tok, ctx.image_size
    gen = dict(batch_size=batch_size, image_size=size)

    items, words = caption_items(ctx.tokens_per_image, tok, data_dir, limit)
    texts = inference.generate_texts(model, tok, items, ctx.load_image, max_new_tokens=10, **gen)
    caption_acc = sum(first_digit_word(t) == w for t, w in zip(texts, words)) / len(words)

    items, names, chance = named_items(ctx.tokens_per_image, tok, data_dir, limit)
    texts = inference.generate_texts(model, tok, items, ctx.load_image, max_new_tokens=6, **gen)
    named_acc = sum(first_word(t) == a for t, a in zip(texts, names)) / len(names)

    docs = [layout(r, tok, 0)[0] for r in _heldout(data_dir, "text")[:limit]]
    ppl, _ = inference.text_perplexity(model, docs, batch_size=batch_size, seq_len=ctx.seq_len,
                                       special=tok.special, image_size=size)
    return {"caption_acc_0shot": caption_acc, "named_acc_4shot": named_acc,
            "named_chance": sum(chance) / len(chance), "text_ppl": ppl}


def format_table(metrics: dict[str, float], prefix: str = "demo") -> str:
    """The demo's closing table (what README shows), from the `<prefix>/...` metrics."""
    m = {k[len(prefix) + 1:]: v for k, v in metrics.items() if k.startswith(prefix + "/")}
    rows = [("zero-shot digit captioning accuracy", f"{m['caption_acc_0shot']:.1%}"),
            ("4-shot made-up-name accuracy", f"{m['named_acc_4shot']:.1%}"),
            ("  chance (1 / names in context)", f"{m['named_chance']:.1%}"),
            ("held-out text perplexity", f"{m['text_ppl']:.2f}")]
    width = max(len(r[0]) for r in rows)
    vw = max(5, *(len(r[1]) for r in rows))
    lines = [f"| {'held-out metric'.ljust(width)} | {'value'.rjust(vw)} |",
             f"|{'-' * (width + 2)}|{'-' * (vw + 2)}|"]
    return "\n".join(lines + [f"| {a.ljust(width)} | {b.rjust(vw)} |" for a, b in rows])
