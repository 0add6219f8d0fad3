"""The embedded demo corpus: built from data installed packages ship, in the real record format.

    python -m mm1_jax.data.demo --output=demo_data

Images are scikit-learn's 1,797 handwritten digits (8x8, drawn dark on white, stored as 32x32 PNG).
They are split by image into train and held-out sets; only train images appear in the training
shards. Text is Python's own documentation (`pydoc_data.topics`); its topics share many
paragraphs, so the text is split by unique paragraph: no held-out paragraph is in training.

    <dir>/caption/*.array_record      one record per (train image, caption template)
    <dir>/interleaved/*.array_record  digit albums, and few-shot "named" episodes (below)
    <dir>/text/*.array_record         runs of training paragraphs, topic by topic
    <dir>/tokenizer.model             1,024 pieces, trained on the training text
    <dir>/heldout/{caption,named,text}.array_record  the same kinds over held-out material
    <dir>/heldout.json                held-out image ids and labels, episode answers

A named episode gives n_ways digits made-up names ("This is a dax.") over n_shots images, then
shows a query image with "This is a" and its name: solvable only by reading the context.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from mm1_jax.data import records
from mm1_jax.data.kinds import KINDS
from mm1_jax.data.records import Record, image_segment, text_segment
from mm1_jax.data.tokenizer import train_tokenizer
from mm1_jax.errors import cli

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "A photo of a handwritten digit {word}.",  # the form MM1's captioning prompt continues
    "a handwritten digit {word}",
    "The number {word}, written by hand.",
)
MADE_UP_NAMES = (
    "dax", "blick", "wug", "toma", "fep", "zorp", "kiki", "bouba", "glorp", "mib", "tove", "snark",
    "quix", "plim", "vorn", "gazzle", "trundle", "moxie", "jib", "nerp", "flonk", "zib", "krell",
    "wimble", "yop", "drass", "lurn", "skiv", "pog", "bramble",
)
NAMED_INTRO = "In this document the digits have new names."
NAMED_SHOT = "This is a {name}."
NAMED_QUERY = "This is a"  # the episode's last text is NAMED_QUERY + " {name}."
IMAGE_SIDE = 32
HELDOUT_FRACTION = 0.2
TOKENIZER_VOCAB = 1024
_DONE = "heldout.json"  # written last: its presence means the corpus is complete


def digit_png(pixels_8x8: np.ndarray) -> bytes:
    """sklearn's 0..16 ink intensities -> a 32x32 grayscale PNG, dark ink on white."""
    gray = (255 - np.asarray(pixels_8x8, np.float64) * (255 / 16)).round().astype(np.uint8)
    im = Image.fromarray(gray, mode="L").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=False)
    return out.getvalue()


def image_seg(png: bytes) -> dict:
    return image_segment(png, "png", IMAGE_SIDE, IMAGE_SIDE)


def named_episode(rng: np.random.Generator, pngs: list[bytes], labels: np.ndarray,
                  pool: np.ndarray, n_ways: int = 2, n_shots: int = 4) -> tuple[list[dict], dict]:
    """One few-shot naming document over images `pool` (ids); returns (segments, answer info)."""
    digits = rng.choice(10, size=n_ways, replace=False)
    names = rng.choice(len(MADE_UP_NAMES), size=n_ways, replace=False)
    name_of = {int(d): MADE_UP_NAMES[n] for d, n in zip(digits, names)}
    # every digit appears among the shots; the rest of the shots are drawn at random
    shot_digits = list(digits) + list(rng.choice(digits, size=n_shots - n_ways))
    rng.shuffle(shot_digits)
    query_digit = int(rng.choice(digits))
    by_digit = {int(d): pool[labels[pool] == d] for d in digits}
    used: set[int] = set()
    segments = [text_segment(NAMED_INTRO)]
    for d in shot_digits + [query_digit]:
        choices = [i for i in by_digit[int(d)] if int(i) not in used]
        i = int(rng.choice(choices))
        used.add(i)
        segments.append(image_seg(pngs[i]))
        segments.append(text_segment(NAMED_SHOT.format(name=name_of[int(d)])))
    info = {"answer": name_of[query_digit], "query_image": i, "query_label": query_digit,
            "names": {str(d): n for d, n in name_of.items()}}
    return segments, info


def _album(rng, pngs, labels, pool) -> list[dict]:
    n = int(rng.integers(2, 6))
    ids = rng.choice(pool, size=n, replace=False)
    segments = [text_segment("Some handwritten digits.")]
    for i in ids:
        word = DIGIT_WORDS[labels[i]]
        if rng.random() < 0.5:
            segments += [image_seg(pngs[i]), text_segment(f"This one is a {word}.")]
        else:
            segments += [text_segment(f"Next comes a {word}:"), image_seg(pngs[i])]
    return segments


def _text_split(rng) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) lists of (topic, chunk): unique paragraphs, ~10% held out."""
    from pydoc_data import topics as pydoc_topics

    seen: set[str] = set()
    train, held = {}, {}
    for topic in sorted(pydoc_topics.topics):
        for para in pydoc_topics.topics[topic].split("\n\n"):
            if not para.strip() or para in seen:
                continue
            seen.add(para)
            side = held if rng.random() < 0.1 else train
            side.setdefault(topic, []).append(para)
    return tuple([(t, c) for t, paras in side.items() for c in _chunks(paras)]
                 for side in (train, held))


def _chunks(paragraphs: list[str], max_chars: int = 700) -> list[str]:
    """Joins consecutive paragraphs into chunks of about max_chars (a demo sequence is short)."""
    chunks, cur = [], ""
    for para in paragraphs:
        if cur and len(cur) + len(para) + 2 > max_chars:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur.strip():
        chunks.append(cur)
    return [c for c in chunks if c.strip()]


def build(output: str, seed: int = 0) -> str:
    """Writes the demo corpus into `output` (replaced if present); returns the path."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    pngs = [digit_png(im) for im in digits.images]
    order = rng.permutation(len(pngs))
    n_held = int(round(HELDOUT_FRACTION * len(pngs)))
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])

    train_text, held_text = _text_split(rng)

    os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo_tmp_", dir=os.path.dirname(os.path.abspath(output)))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the corpus is an ordinary directory
    try:
        train_texts = _write_split(tmp, rng, pngs, labels, train, train_text, heldout=False)
        heldout_info = _write_split(os.path.join(tmp, "heldout"), rng, pngs, labels, held,
                                    held_text, heldout=True)
        train_tokenizer(train_texts, TOKENIZER_VOCAB, os.path.join(tmp, "tokenizer.model"))
        meta = {"seed": seed, "image_side": IMAGE_SIDE, "heldout_image_ids": held.tolist(),
                "heldout_labels": labels[held].tolist(),
                "digit_words": DIGIT_WORDS, "caption_templates": CAPTION_TEMPLATES,
                "named_query": NAMED_QUERY, **heldout_info}
        with open(os.path.join(tmp, _DONE), "w") as f:
            json.dump(meta, f, indent=1)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _write_split(out, rng, pngs, labels, pool, text_chunks, heldout: bool):
    """Writes one split; returns the training texts (train) or the episode answers (held-out)."""
    src = "demo:sklearn-digits"
    captions, named, albums = [], [], []
    for i in pool:
        word = DIGIT_WORDS[labels[i]]
        templates = [0] if heldout else [0, 1 + int(rng.integers(len(CAPTION_TEMPLATES) - 1))]
        for t in templates:
            captions.append(Record("caption", f"digit-{i}-t{t}", src, [
                image_seg(pngs[i]), text_segment(CAPTION_TEMPLATES[t].format(word=word))]))
    n_named = 200 if heldout else 1500
    answers = []
    for j in range(n_named):
        segments, info = named_episode(rng, pngs, labels, pool)
        named.append(Record("interleaved", f"named-{j}", "demo:named", segments))
        answers.append({"id": f"named-{j}", **info})
    if not heldout:
        albums = [Record("interleaved", f"album-{j}", src, _album(rng, pngs, labels, pool))
                  for j in range(1500)]
    texts = [Record("text", f"{topic}-{j}", "demo:pydoc_data.topics", [text_segment(chunk)])
             for j, (topic, chunk) in enumerate(text_chunks)]

    if heldout:
        for name, recs in (("caption", captions), ("named", named), ("text", texts)):
            records.write_records(os.path.join(out, f"{name}.array_record"), recs)
        return {"heldout_named": answers}

    interleaved = [r for pair in zip(albums, named) for r in pair]  # alternate the two styles
    for kind, recs, shards in (("caption", captions, 2), ("interleaved", interleaved, 2),
                               ("text", texts, 1)):
        with records.ShardedWriter(os.path.join(out, kind), "demo", shards) as w:
            for r in recs:
                w.write(r)
    return [t for r in captions + interleaved + texts for t in r.texts]


def ensure_demo_data(directory: str) -> str:
    """Builds the demo corpus in `directory` unless a complete one is there; returns the path."""
    if not os.path.exists(os.path.join(directory, _DONE)):
        build(directory)
    return directory


def load_heldout(directory: str) -> dict:
    """heldout.json of a demo corpus: held-out image ids/labels, named-episode answers."""
    with open(os.path.join(directory, _DONE)) as f:
        return json.load(f)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Build the embedded demo corpus.")
    p.add_argument("--output", default="demo_data", help="directory to write (replaced)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = build(a.output, a.seed)
    counts = {k: sum(records.num_records(s) for s in records.shard_paths(path, k))
              for k in KINDS}
    print(json.dumps({"output": path, "records": counts,
                      "heldout_images": len(load_heldout(path)["heldout_image_ids"])}))


if __name__ == "__main__":
    cli(main)()
