"""The one record schema for caption, interleaved and text data, and its ArrayRecord shards.

A record is a msgpack map (schema version 1):

    {"v": 1, "kind": "caption" | "interleaved" | "text", "id": str, "source": str,
     "segments": [{"text": str} | {"image": bytes, "format": "jpeg"|"png"|"webp", "w": int, "h": int}, ...]}

`segments` are in document order. A caption record is `[image, text]`, a text record is `[text]`,
an interleaved record any order of both. Images keep their encoded bytes: decoding happens in the
pipeline (mm1_jax.data.images), so a corpus is written once and read at any resolution.

Shards live at `<dir>/<kind>/<name>-00003-of-00008.array_record`; every `*.array_record` file under
`<dir>/<kind>/` belongs to that kind, so several converted sources can share one kind directory.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator, Sequence

import msgpack
from array_record.python import array_record_module

from mm1_jax.data.kinds import KINDS
from mm1_jax.errors import DataError

SCHEMA_VERSION = 1
IMAGE_FORMATS = ("jpeg", "png", "webp")
# One record per chunk keeps random access (global shuffle) to a single record read; zstd at a
# low level costs little on already-compressed images and shrinks text records several-fold.
WRITER_OPTIONS = "group_size:1,zstd:1"


class RecordError(DataError):
    """A record that does not follow the schema; the message names the shard and index."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One item: text and image segments in document order."""

    kind: str
    id: str
    source: str
    segments: list[dict]

    @property
    def num_images(self) -> int:
        return sum("image" in s for s in self.segments)

    @property
    def texts(self) -> list[str]:
        return [s["text"] for s in self.segments if "text" in s]


def text_segment(text: str) -> dict:
    return {"text": text}


def image_segment(data: bytes, fmt: str, width: int, height: int) -> dict:
    return {"image": data, "format": fmt, "w": int(width), "h": int(height)}


def encode(record: Record) -> bytes:
    """Serialises a record; key order is fixed so equal records give equal bytes."""
    _check(record, "encode()")
    return msgpack.packb(
        {"v": SCHEMA_VERSION, "kind": record.kind, "id": record.id, "source": record.source,
         "segments": record.segments},
        use_bin_type=True,
    )


def decode(data: bytes, where: str = "record") -> Record:
    """Parses and checks one serialised record; `where` names it in errors (shard, index)."""
    try:
        m = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise RecordError(f"{where}: not a msgpack record ({type(e).__name__}: {e}); was it "
                          "written by mm1_jax.data.convert?") from e
    if not isinstance(m, dict) or m.get("v") != SCHEMA_VERSION:
        raise RecordError(f"{where}: schema version {m.get('v') if isinstance(m, dict) else None!r}"
                          f", expected {SCHEMA_VERSION}; re-convert the corpus with this version")
    record = Record(kind=m.get("kind"), id=m.get("id"), source=m.get("source"),
                    segments=m.get("segments"))
    _check(record, where)
    return record


def _check(r: Record, where: str) -> None:
    if r.kind not in KINDS:
        raise RecordError(f"{where}: kind {r.kind!r} is not one of {KINDS}")
    if not isinstance(r.id, str) or not isinstance(r.source, str):
        raise RecordError(f"{where}: id and source must be strings")
    if not isinstance(r.segments, list) or not r.segments:
        raise RecordError(f"{where} (id {r.id!r}): needs a non-empty list of segments")
    for i, s in enumerate(r.segments):
        ok = isinstance(s, dict) and (
            (set(s) == {"text"} and isinstance(s["text"], str))
            or (set(s) == {"image", "format", "w", "h"} and isinstance(s["image"], bytes)
                and s["format"] in IMAGE_FORMATS))
        if not ok:
            raise RecordError(f"{where} (id {r.id!r}): segment {i} is neither {{'text': str}} nor "
                              f"{{'image': bytes, 'format': {IMAGE_FORMATS}, 'w', 'h'}}")
    if r.kind == "text" and r.num_images:
        raise RecordError(f"{where} (id {r.id!r}): a text record holds no images")


# ------------------------------------------------------------------------------------ shards


def shard_paths(data_dir: str, kind: str) -> list[str]:
    """All shards of one kind, sorted so that every process sees the same order."""
    return sorted(glob.glob(os.path.join(data_dir, kind, "*.array_record")))


def shard_name(name: str, index: int, count: int) -> str:
    return f"{name}-{index:05d}-of-{count:05d}.array_record"


class ShardedWriter:
    """Writes records round-robin into `num_shards` ArrayRecord files.

    Records go to shard i % N in the order they are written, so the same input in the same
    order gives byte-identical shards. Files are written under a temporary name and renamed on
    `close()`, so a reader's glob never picks up a half-written shard.
    """

    def __init__(self, directory: str, name: str, num_shards: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        os.makedirs(directory, exist_ok=True)
        self.paths = [os.path.join(directory, shard_name(name, i, num_shards))
                      for i in range(num_shards)]
        self._writers = [array_record_module.ArrayRecordWriter(p + ".tmp", WRITER_OPTIONS)
                         for p in self.paths]
        self.counts = [0] * num_shards
        self._next = 0

    def write(self, record: Record) -> None:
        i = self._next % len(self._writers)
        self._writers[i].write(encode(record))
        self.counts[i] += 1
        self._next += 1

    def close(self) -> None:
        for w, p in zip(self._writers, self.paths):
            w.close()
            os.replace(p + ".tmp", p)

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:  # leave no temporary files behind a failed conversion
            for w, p in zip(self._writers, self.paths):
                w.close()
                if os.path.exists(p + ".tmp"):
                    os.remove(p + ".tmp")


def write_records(path: str, recs: Sequence[Record]) -> None:
    """Writes records into one ArrayRecord file (held-out sets, tests), renamed into place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = array_record_module.ArrayRecordWriter(path + ".tmp", WRITER_OPTIONS)
    for r in recs:
        writer.write(encode(r))
    writer.close()
    os.replace(path + ".tmp", path)


def num_records(path: str) -> int:
    reader = array_record_module.ArrayRecordReader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def read_records(paths: str | Sequence[str]) -> Iterator[Record]:
    """Yields every record of the given shards in file order (for tools and tests, not training)."""
    for path in [paths] if isinstance(paths, str) else paths:
        reader = array_record_module.ArrayRecordReader(path)
        try:
            for i in range(reader.num_records()):
                yield decode(reader.read([i])[0], where=f"{path} record {i}")
        finally:
            reader.close()
