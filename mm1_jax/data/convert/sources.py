"""Readers for the input formats; each yields core.Raw items, or core.Skip for broken input.

- webdataset: tar shards as img2dataset writes them: `<key>.jpg|png|webp|...` with `<key>.txt`
  and/or `<key>.json` (caption under "caption"; "url" becomes the record's source).
- obelics: parquet with list columns `texts` and `images` aligned by position (exactly one of the
  two is non-null at each position). Images are bytes, {"bytes", "path"} structs (Hugging Face
  `Image` feature), or paths relative to --image_root.
- text: JSONL or parquet with a string field (default `text`).
- image_folder: a JSONL of {"image": path relative to --image_root, "caption": str}.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator

from mm1_jax.data.convert.core import Raw, RawImage, Skip

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


# ------------------------------------------------------------------------------ webdataset


def webdataset(paths: list[str], caption_field: str = "caption") -> Iterator[Raw | Skip]:
    for path in paths:
        name = os.path.basename(path)
        key, files = None, {}
        try:
            with tarfile.open(path, "r|*") as tar:  # streaming: a shard is never held whole
                for m in tar:
                    base = os.path.basename(m.name)
                    if not m.isfile() or "." not in base or base.startswith("."):
                        continue
                    # webdataset convention: the key is the path up to the first dot of the name;
                    # a sample's files are adjacent in the tar
                    stem, ext = base.split(".", 1)
                    k = os.path.join(os.path.dirname(m.name), stem)
                    if k != key:
                        if key is not None:
                            yield _wds_item(name, key, files, caption_field)
                        key, files = k, {}
                    files[ext.lower()] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            # The rest of the shard is unreadable. Samples completed before the damage are kept;
            # the one being read when it hit may be partial and goes with the damage.
            yield Skip("corrupt_tar", f"{name} at {key}: {e}")
            continue
        if key is not None:
            yield _wds_item(name, key, files, caption_field)


def _wds_item(tar_name: str, key: str, files: dict[str, bytes], caption_field: str) -> Raw | Skip:
    where = f"{tar_name}:{key}"
    meta = {}
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            if "txt" not in files:
                return Skip("bad_json", where)
    caption = None
    if "txt" in files:
        try:
            caption = files["txt"].decode("utf-8")
        except UnicodeDecodeError:
            return Skip("bad_text", where)
    elif isinstance(meta, dict) and isinstance(meta.get(caption_field), str):
        caption = meta[caption_field]
    if caption is None:
        return Skip("missing_caption", where)
    image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
    if image is None:
        return Skip("missing_image", where)
    source = meta.get("url") if isinstance(meta, dict) and isinstance(meta.get("url"), str) else tar_name
    return Raw("caption", os.path.basename(key), source, [RawImage(image), caption], where)


# --------------------------------------------------------------------------------- parquet


def _parquet_rows(path: str, columns: list[str] | None) -> Iterator[tuple[int, dict | Skip]]:
    import pyarrow.parquet as pq

    name = os.path.basename(path)
    try:
        pf = pq.ParquetFile(path)
        present = set(pf.schema_arrow.names)
        missing = [c for c in (columns or []) if c not in present]
        if missing:
            yield 0, Skip("missing_column", f"{name}: no column(s) {missing}")
            return
        row = 0
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            for r in batch.to_pylist():
                yield row, r
                row += 1
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError ... on a damaged file
        yield -1, Skip("corrupt_file", f"{name}: {e}")


def obelics(paths: list[str], image_root: str | None = None,
            id_field: str = "id") -> Iterator[Raw | Skip]:
    for path in paths:
        name = os.path.basename(path)
        import pyarrow.parquet as pq

        try:
            names = set(pq.ParquetFile(path).schema_arrow.names)
        except Exception as e:
            yield Skip("corrupt_file", f"{name}: {e}")
            continue
        cols = ["texts", "images"] + [c for c in (id_field, "url") if c in names]
        for row, r in _parquet_rows(path, cols):
            if isinstance(r, Skip):
                yield r
                continue
            where = f"{name}:{row}"
            texts, imgs = r.get("texts"), r.get("images")
            if not isinstance(texts, list) or not isinstance(imgs, list) or len(texts) != len(imgs):
                yield Skip("misaligned", where)
                continue
            segments: list = []
            for t, im in zip(texts, imgs):
                if (t is None) == (im is None):
                    segments = None
                    break
                segments.append(t if t is not None else _image_ref(im, image_root))
            if segments is None:
                yield Skip("misaligned", where)
                continue
            doc_id = str(r[id_field]) if r.get(id_field) is not None else where
            source = r["url"] if isinstance(r.get("url"), str) else name
            yield Raw("interleaved", doc_id, source, segments, where)


def _image_ref(value, image_root: str | None) -> RawImage:
    """An OBELICS image cell -> bytes: raw bytes, an HF {"bytes", "path"} struct, or a path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return RawImage(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return RawImage(bytes(value))
    if isinstance(value, str):
        return _read_image_file(value, image_root)
    return RawImage(missing="missing_image")


def _read_image_file(rel: str, root: str | None) -> RawImage:
    if "://" in rel:  # a URL: OBELICS ships URLs; download them first (img2dataset does)
        return RawImage(missing="image_url_not_downloaded")
    path = rel if os.path.isabs(rel) or root is None else os.path.join(root, rel)
    try:
        with open(path, "rb") as f:
            return RawImage(f.read())
    except OSError:
        return RawImage(missing="missing_file")


# ------------------------------------------------------------------------------------ text


def text(paths: list[str], text_field: str = "text", id_field: str = "id") -> Iterator[Raw | Skip]:
    for path in paths:
        name = os.path.basename(path)
        for row, r in (_parquet_rows(path, None) if path.endswith(".parquet") else _jsonl(path)):
            if isinstance(r, Skip):
                yield r
                continue
            where = f"{name}:{row}"
            value = r.get(text_field)
            if not isinstance(value, str):
                yield Skip("missing_field", where)
                continue
            doc_id = str(r[id_field]) if r.get(id_field) is not None else where
            yield Raw("text", doc_id, name, [value], where)


def _jsonl(path: str) -> Iterator[tuple[int, dict | Skip]]:
    name = os.path.basename(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        yield -1, Skip("corrupt_file", f"{name}: {e}")
        return
    with f:
        for row, line in enumerate(f):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield row, Skip("bad_json", f"{name}:{row}")
                continue
            yield row, r if isinstance(r, dict) else Skip("bad_json", f"{name}:{row}")


# ---------------------------------------------------------------------------- image folder


def image_folder(paths: list[str], image_root: str | None = None,
                 caption_field: str = "caption") -> Iterator[Raw | Skip]:
    for path in paths:
        name = os.path.basename(path)
        root = image_root or os.path.dirname(os.path.abspath(path))
        for row, r in _jsonl(path):
            if isinstance(r, Skip):
                yield r
                continue
            where = f"{name}:{row}"
            image, caption = r.get("image"), r.get(caption_field)
            if not isinstance(image, str) or not isinstance(caption, str):
                yield Skip("missing_field", where)
                continue
            yield Raw("caption", image, name, [_read_image_file(image, root), caption], where)
