"""In-context examples for k-shot evaluation: a support split, and k examples per query from it.

One benchmark file is split by image into a support part and a query part (a hash of the image id
decides, so the split does not depend on file order or on `limit`). Every shot count is scored on
the same query part, and a query's examples come from the support part only: never the query
itself, nor another question about the query's image. The choice is a deterministic function of
(seed, query id), so reruns and different shot counts see reproducible examples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from mm1_jax.eval import prompts

T = TypeVar("T")


def _unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for `key` (Python's hash() varies per process)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def split_support(examples: Sequence[T], image_id: Callable[[T], object],
                  support_fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """(support, query): each image and all its examples go to one side; `support_fraction` in
    [0, 1) (`config.evals.<name>.support_fraction`, checked by config.validate)."""
    support, query = [], []
    for ex in examples:
        side = support if _unit(f"{seed}:split:{image_id(ex)}") < support_fraction else query
        side.append(ex)
    return support, query


def split_for_shots(examples: Sequence[T], image_id: Callable[[T], object], shots: Sequence[int],
                    support_fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """(support, query) for evaluating at every count in `shots`: all examples are queries when
    only 0-shot is asked, else every count is scored on the same query part."""
    if max(shots) == 0:
        return [], list(examples)
    support, query = split_support(examples, image_id, support_fraction, seed)
    if not query:
        raise ValueError("no query examples are left after taking the support split; lower "
                         "support_fraction or give more annotations")
    return support, query


def choose_shots(support: Sequence[T], k: int, query_key: object, query_image: object,
                 image_id: Callable[[T], object], seed: int = 0) -> list[T]:
    """k examples of `support` for one query, none showing the query's image."""
    if k == 0:
        return []
    pool = [ex for ex in support if image_id(ex) != query_image]
    if len(pool) < k:
        raise ValueError(f"{k}-shot evaluation needs at least {k} support examples on other "
                         f"images, but the support split has {len(pool)}; raise the support "
                         "fraction or give more annotations")
    rng = np.random.default_rng(int(_unit(f"{seed}:shots:{query_key}") * 2**63))
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def _image(e) -> object:
    return e.image_id


def caption_prompt(support: Sequence, query, k: int, seed: int = 0) -> list[dict]:
    """Segments of a k-shot captioning prompt (readers.CaptionExample); an in-context example
    shows its image's first reference caption."""
    shots = choose_shots(support, k, query.image_id, query.image_id, _image, seed)
    return prompts.few_shot(prompts.CAPTION_PROMPT,
                            [(s.image_path, s.references[0], {}) for s in shots], query.image_path)


def most_common(answers: Sequence[str]) -> str:
    return max(answers, key=answers.count)


def vqa_prompt(support: Sequence, query, k: int, seed: int = 0) -> list[dict]:
    """Segments of a k-shot VQA prompt (readers.VQAExample); an in-context example shows its
    question's most common human answer."""
    shots = choose_shots(support, k, query.question_id, query.image_id, _image, seed)
    return prompts.few_shot(
        prompts.VQA_PROMPT,
        [(s.image_path, most_common(s.answers), {"QUESTION": s.question}) for s in shots],
        query.image_path, QUESTION=query.question)
