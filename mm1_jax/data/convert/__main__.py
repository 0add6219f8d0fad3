"""python -m mm1_jax.data.convert FORMAT --input=GLOB --output=DIR [options]; see --help.

COCO captions: `python -m mm1_jax.data.convert coco --annotations=captions_train2017.json
--image_root=train2017/ --output=DIR`. A progress bar (items/s) runs while items are read; a
closing line says what was written, what was skipped and why, and how long it took. A
conversion that writes no record exits with an error naming the likely cause.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tqdm import tqdm

from mm1_jax.data.convert import coco, core, sources
from mm1_jax.data.images import ImageLimits
from mm1_jax.errors import DataError, cli

FORMATS = {
    "webdataset": ("caption", "img2dataset tar shards: key.jpg + key.txt/key.json"),
    "obelics": ("interleaved", "parquet with aligned list columns `texts` and `images`"),
    "text": ("text", "JSONL or parquet with a text field"),
    "image_folder": ("caption", 'JSONL of {"image": path, "caption": ...} plus the images'),
    "coco": ("caption", "COCO captions JSON (--annotations) plus the images (--image_root)"),
}
# What the commonest skip reasons of a conversion that wrote nothing usually mean.
HINTS = {
    "missing_file": "image paths are relative to --image_root; is it the folder holding them?",
    "missing_field": "the records lack the fields read (--caption_field, --text_field, "
                     "image_folder's \"image\")",
    "bad_json": "the input is not JSON Lines (one JSON object per line)",
    "missing_column": "the parquet files lack the columns this format reads",
    "image_url_not_downloaded": "the images are URLs: download them first (img2dataset)",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mm1_jax.data.convert",
        description="Convert a corpus to ArrayRecord shards of mm1_jax records. Writes "
                    "<output>/<kind>/<name>-NNNNN-of-NNNNN.array_record and <name>.summary.json.")
    p.add_argument("format", choices=sorted(FORMATS),
                   help="; ".join(f"{k}: {v[1]}" for k, v in FORMATS.items()))
    p.add_argument("--input", help="comma-separated file globs (every format but coco)")
    p.add_argument("--annotations", help="coco: comma-separated globs of COCO captions JSON files")
    p.add_argument("--output", required=True, help="corpus directory (config data.dir)")
    p.add_argument("--name", help="shard file prefix (default: the format)")
    p.add_argument("--num_shards", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="processes checking images")
    p.add_argument("--image_root", help="where relative image paths start (obelics, "
                   "image_folder, coco)")
    p.add_argument("--text_field", default="text", help="text: the field holding the text")
    p.add_argument("--caption_field", default="caption", help="webdataset json / image_folder")
    p.add_argument("--id_field", default="id", help="obelics/text: the field holding an id")
    d = ImageLimits()
    p.add_argument("--min_side", type=int, default=d.min_side, help="smaller images are skipped")
    p.add_argument("--max_pixels", type=int, default=d.max_pixels, help="larger are skipped")
    p.add_argument("--max_aspect", type=float, default=d.max_aspect, help="long/short side limit")
    a = p.parse_args(argv)
    flag = "--annotations" if a.format == "coco" else "--input"
    if not getattr(a, flag[2:]):
        p.error(f"{a.format} needs {flag}")
    return a


def _items(a: argparse.Namespace, paths: list[str]):
    if a.format == "webdataset":
        return sources.webdataset(paths, a.caption_field)
    if a.format == "obelics":
        return sources.obelics(paths, a.image_root, a.id_field)
    if a.format == "text":
        return sources.text(paths, a.text_field, a.id_field)
    if a.format == "coco":
        return coco.captions(paths, a.image_root)
    return sources.image_folder(paths, a.image_root, a.caption_field)


def main(argv=None) -> dict:
    a = parse_args(argv)
    flag, pattern = ("--annotations", a.annotations) if a.format == "coco" else ("--input", a.input)
    try:
        paths = core.expand_inputs(pattern)
    except SystemExit:
        raise DataError(f"{flag}={pattern!r} matches no files") from None
    kind = FORMATS[a.format][0]
    t = time.perf_counter()
    with tqdm(_items(a, paths), unit="item", desc=f"reading {a.format}", dynamic_ncols=True) as items:
        summary = core.convert(
            items, output=a.output, kind=kind, name=a.name or a.format, num_shards=a.num_shards,
            limits=ImageLimits(a.min_side, a.max_pixels, a.max_aspect), workers=a.workers,
            info={"format": a.format, "inputs": paths})
    json.dump(summary, sys.stdout, indent=1)
    print()
    print(closing_line(summary, os.path.join(a.output, kind), time.perf_counter() - t),
          file=sys.stderr)
    if not summary["records_written"]:
        raise DataError(zero_records_cause(summary, a.format, paths))
    return summary


def closing_line(summary: dict, out_dir: str, seconds: float) -> str:
    """What a conversion wrote (records, shards, bytes), skipped (by reason) and took."""
    shards = [os.path.join(out_dir, f) for f in summary["records_per_shard"]]
    size = sum(os.path.getsize(f) for f in shards if os.path.exists(f))
    skipped = summary["skipped"]
    line = (f"wrote {summary['records_written']:,} records of {summary['items_read']:,} items "
            f"in {len(shards)} shards ({size / 1e6:.1f} MB) to {out_dir} in {seconds:.1f} s "
            f"({summary['items_read'] / max(seconds, 1e-9):.1f} items/s)")
    if skipped:
        line += f"; skipped {sum(skipped.values()):,}: " + ", ".join(
            f"{reason} {n:,}" for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
    removed = summary["images_removed_from_kept_items"]
    if removed:
        line += "; images removed from kept documents: " + ", ".join(
            f"{reason} {n:,}" for reason, n in sorted(removed.items()))
    return line


def zero_records_cause(summary: dict, fmt: str, paths: list[str]) -> str:
    """Why a conversion wrote no record, as far as its summary and inputs tell."""
    where = f"{fmt} conversion of {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}"
    coco_files = [p for p in paths if fmt != "coco" and coco.looks_like_coco(p)]
    if coco_files:
        return (f"the {where} wrote 0 records: {coco_files[0]} is a COCO captions file; convert "
                f"it with `python -m mm1_jax.data.convert coco --annotations={coco_files[0]} "
                "--image_root=<its image folder> --output=...`")
    if not summary["items_read"]:
        return (f"the {where} wrote 0 records: the inputs hold no items ({FORMATS[fmt][1]} "
                "expected); is the format right?")
    skipped = summary["skipped"]
    top = max(skipped, key=skipped.get)
    example = summary["skip_examples"].get(top, ["?"])[0]
    return (f"the {where} wrote 0 records: all {summary['items_read']:,} items were skipped "
            f"({', '.join(f'{r} {n:,}' for r, n in sorted(skipped.items()))}; e.g. {top} at "
            f"{example}){': ' + HINTS[top] if top in HINTS else ''}")


if __name__ == "__main__":
    cli(main)()
