"""COCO captions as a converter source: `captions_train2017.json` (and its kin: Flickr30k,
NoCaps and TextCaps ship the same format) plus the image folder, as COCO distributes them.

    python -m mm1_jax.data.convert coco --annotations=annotations/captions_train2017.json \\
        --image_root=train2017/ --output=corpus/

The file holds `images` ({"id", "file_name"}) and `annotations` ({"id", "image_id",
"caption"}). Every caption becomes one caption record (COCO has about five per image), its
image read once for all of them; the record id is `<image id>-<annotation id>`, its source the
image's file name. A missing image skips its captions as `missing_file`, an undecodable one as
the image check says (`corrupt_image`, ...); both are counted in the summary.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator

from mm1_jax.data.convert.core import Raw, Skip
from mm1_jax.data.convert.sources import _read_image_file
from mm1_jax.errors import DataError


def load(path: str) -> dict:
    """A COCO captions file, checked for its two lists; a DataError naming it otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"--annotations {path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):
        raise DataError(f"--annotations {path}: not a COCO captions file (it needs the lists "
                        "\"images\" and \"annotations\")")
    return data


def looks_like_coco(path: str) -> bool:
    """Whether `path` is a COCO captions file (for the hint of a conversion that wrote nothing)."""
    if not path.endswith(".json"):
        return False
    try:
        load(path)
    except DataError:
        return False
    return True


def captions(paths: list[str], image_root: str | None) -> Iterator[Raw | Skip]:
    """One caption record per annotation of the COCO files `paths`, images under `image_root`
    (default: each file's own directory)."""
    for path in paths:
        name, data = os.path.basename(path), load(path)
        root = image_root or os.path.dirname(os.path.abspath(path))
        by_image = collections.defaultdict(list)
        files = {im.get("id"): im.get("file_name") for im in data["images"] if isinstance(im, dict)}
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
                yield Skip("missing_field", f"{name}: annotations[{i}]")
            elif not isinstance(files.get(ann.get("image_id")), str):
                yield Skip("unknown_image", f"{name}: annotations[{i}] image_id {ann.get('image_id')!r}")
            else:
                by_image[ann["image_id"]].append(ann)
        for image_id, anns in by_image.items():
            file = files[image_id]
            image = _read_image_file(file, root)  # read once for all its captions
            for ann in anns:
                yield Raw("caption", f"{image_id}-{ann.get('id', len(anns))}", file,
                          [image, ann["caption"]], f"{name}: image {image_id} ({file})")
