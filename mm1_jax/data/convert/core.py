"""What every converter shares: raw items, the image/text checks, sharded writing, the summary."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import json
import os
from collections.abc import Iterable, Iterator

from mm1_jax.data import records
from mm1_jax.data.images import ImageLimits, ImageSkip, check_image

MAX_EXAMPLES = 5  # input locations kept per skip reason in the summary, to find the culprits


@dataclasses.dataclass
class Skip:
    """An input item dropped before any image is looked at (broken JSON, missing fields ...)."""

    reason: str
    where: str


@dataclasses.dataclass
class RawImage:
    """Encoded bytes still to be checked, or why there are none (`missing`: a summary reason)."""

    data: bytes | None = None
    missing: str | None = None


@dataclasses.dataclass
class Raw:
    """An item as read from the input: text segments and unchecked images in document order."""

    kind: str
    id: str
    source: str
    segments: list[str | RawImage]
    where: str  # input file and position, for the summary's examples


@dataclasses.dataclass
class Outcome:
    record: records.Record | None
    skip: str | None = None  # why the whole item was dropped
    image_skips: list[str] = dataclasses.field(default_factory=list)  # images removed from a kept item
    converted: list[str] = dataclasses.field(default_factory=list)  # "PNG/P", "JPEG/CMYK" ...


def finalize(raw: Raw, limits: ImageLimits) -> Outcome:
    """Checks a raw item's images and texts and builds its record, or says why it cannot be one.

    A caption (or image-folder) item stands or falls with its one image; an interleaved document
    loses only its bad images and is dropped only when no text is left.
    """
    segments, image_skips, converted = [], [], []
    for seg in raw.segments:
        if isinstance(seg, str):
            if seg.strip():
                segments.append(records.text_segment(seg))
            continue
        try:
            if seg.missing:
                raise ImageSkip(seg.missing)
            im = check_image(seg.data, limits)
        except ImageSkip as e:
            if raw.kind == "caption":
                return Outcome(None, skip=e.reason)
            image_skips.append(e.reason)
            continue
        if im.converted_from:
            converted.append(im.converted_from)
        segments.append(records.image_segment(im.data, im.format, im.width, im.height))
    n_text = sum("text" in s for s in segments)
    if not n_text:
        return Outcome(None, skip="empty_text", image_skips=image_skips)
    if raw.kind == "caption" and len(segments) != 2:
        return Outcome(None, skip="missing_image")
    rec = records.Record(raw.kind, raw.id, raw.source, segments)
    return Outcome(rec, image_skips=image_skips, converted=converted)


def expand_inputs(pattern: str) -> list[str]:
    """Comma-separated globs -> sorted, de-duplicated paths (sorted: reruns see the same order)."""
    paths = sorted({p for part in pattern.split(",") if part for p in glob.glob(part)})
    if not paths:
        raise SystemExit(f"--input={pattern!r} matches no files")
    return paths


def convert(items: Iterable[Raw | Skip], *, output: str, kind: str, name: str, num_shards: int,
            limits: ImageLimits = ImageLimits(), workers: int = 1,
            info: dict | None = None) -> dict:
    """Writes `items` as shards `<output>/<kind>/<name>-*.array_record` and returns the summary.

    The summary (also written to `<output>/<kind>/<name>.summary.json` and printed by the CLI)
    counts records per shard, items skipped per reason, images removed from kept documents per
    reason, and images converted per source format/mode.
    """
    out_dir = os.path.join(output, kind)
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, f"{name}-*-of-*.array_record")):
        os.remove(stale)  # a rerun with another shard count must not leave old shards behind
    skipped: collections.Counter = collections.Counter()
    image_skips: collections.Counter = collections.Counter()
    converted: collections.Counter = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)

    def note(reason: str, where: str) -> None:
        skipped[reason] += 1
        if len(examples[reason]) < MAX_EXAMPLES:
            examples[reason].append(where)

    seen = 0
    with records.ShardedWriter(out_dir, name, num_shards) as writer:
        for item, outcome in _finalized(items, limits, workers):
            seen += 1
            if outcome is None:
                note(item.reason, item.where)
                continue
            image_skips.update(outcome.image_skips)
            converted.update(outcome.converted)
            if outcome.record is None:
                note(outcome.skip, item.where)
            else:
                writer.write(outcome.record)
    summary = {
        "kind": kind, "name": name, **(info or {}),
        "items_read": seen,
        "records_written": sum(writer.counts),
        "records_per_shard": {os.path.basename(p): c for p, c in zip(writer.paths, writer.counts)},
        "skipped": dict(sorted(skipped.items())),
        "images_removed_from_kept_items": dict(sorted(image_skips.items())),
        "images_converted": dict(sorted(converted.items())),
        "skip_examples": dict(sorted(examples.items())),
    }
    with open(os.path.join(out_dir, f"{name}.summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _finalized(items: Iterable[Raw | Skip], limits: ImageLimits,
               workers: int) -> Iterator[tuple[Raw | Skip, Outcome | None]]:
    """(item, outcome) in input order; image checks run in `workers` processes when > 1."""
    if workers <= 1:
        for item in items:
            yield item, None if isinstance(item, Skip) else finalize(item, limits)
        return
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        window: collections.deque = collections.deque()
        for item in items:
            fut = None if isinstance(item, Skip) else pool.submit(finalize, item, limits)
            window.append((item, fut))
            if len(window) >= 8 * workers:  # bounded look-ahead keeps memory flat
                it, f = window.popleft()
                yield it, f.result() if f else None
        while window:
            it, f = window.popleft()
            yield it, f.result() if f else None
