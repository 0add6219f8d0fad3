"""python -m mm1_jax.data.convert FORMAT --input=GLOB --output=DIR [options]; see --help."""

from __future__ import annotations

import argparse
import json
import sys

from mm1_jax.data.convert import core, sources
from mm1_jax.data.images import ImageLimits
from mm1_jax.errors import cli

FORMATS = {
    "webdataset": ("caption", "img2dataset tar shards: key.jpg + key.txt/key.json"),
    "obelics": ("interleaved", "parquet with aligned list columns `texts` and `images`"),
    "text": ("text", "JSONL or parquet with a text field"),
    "image_folder": ("caption", 'JSONL of {"image": path, "caption": ...} plus the images'),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mm1_jax.data.convert",
        description="Convert a corpus to ArrayRecord shards of mm1_jax records. Writes "
                    "<output>/<kind>/<name>-NNNNN-of-NNNNN.array_record and <name>.summary.json.")
    p.add_argument("format", choices=sorted(FORMATS),
                   help="; ".join(f"{k}: {v[1]}" for k, v in FORMATS.items()))
    p.add_argument("--input", required=True, help="comma-separated file globs")
    p.add_argument("--output", required=True, help="corpus directory (config data.dir)")
    p.add_argument("--name", help="shard file prefix (default: the format)")
    p.add_argument("--num_shards", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="processes checking images")
    p.add_argument("--image_root", help="where relative image paths start (obelics, image_folder)")
    p.add_argument("--text_field", default="text", help="text: the field holding the text")
    p.add_argument("--caption_field", default="caption", help="webdataset json / image_folder")
    p.add_argument("--id_field", default="id", help="obelics/text: the field holding an id")
    d = ImageLimits()
    p.add_argument("--min_side", type=int, default=d.min_side, help="smaller images are skipped")
    p.add_argument("--max_pixels", type=int, default=d.max_pixels, help="larger are skipped")
    p.add_argument("--max_aspect", type=float, default=d.max_aspect, help="long/short side limit")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    paths = core.expand_inputs(a.input)
    kind = FORMATS[a.format][0]
    if a.format == "webdataset":
        items = sources.webdataset(paths, a.caption_field)
    elif a.format == "obelics":
        items = sources.obelics(paths, a.image_root, a.id_field)
    elif a.format == "text":
        items = sources.text(paths, a.text_field, a.id_field)
    else:
        items = sources.image_folder(paths, a.image_root, a.caption_field)
    summary = core.convert(
        items, output=a.output, kind=kind, name=a.name or a.format, num_shards=a.num_shards,
        limits=ImageLimits(a.min_side, a.max_pixels, a.max_aspect), workers=a.workers,
        info={"format": a.format, "inputs": paths})
    json.dump(summary, sys.stdout, indent=1)
    print()
    return summary


if __name__ == "__main__":
    cli(main)()
