"""Builders for test inputs: encoded images of every mode the converters meet, small corpora."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mm1_jax.data import records


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def rgb_array(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth RGB gradient with a seed-dependent tint (JPEG keeps it close)."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    b = np.full_like(r, (seed * 37) % 256)
    return np.stack([r, g, b], -1)


def jpeg(w=64, h=48, seed=0) -> bytes:
    return encode(Image.fromarray(rgb_array(w, h, seed)), "JPEG", quality=95)


def png(w=64, h=48, seed=0) -> bytes:
    return encode(Image.fromarray(rgb_array(w, h, seed)), "PNG")


def webp(w=64, h=48, seed=0) -> bytes:
    return encode(Image.fromarray(rgb_array(w, h, seed)), "WEBP", lossless=True)


def gray_jpeg(w=40, h=40) -> bytes:
    return encode(Image.fromarray(rgb_array(w, h, 1)[..., 0]), "JPEG")


def cmyk_jpeg(w=40, h=40) -> bytes:
    return encode(Image.new("CMYK", (w, h), (0, 255, 255, 0)), "JPEG", quality=100)  # red


def palette_png(w=40, h=40) -> bytes:
    im = Image.fromarray(rgb_array(w, h, 2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return encode(im, "PNG")


def rgba_png(w=40, h=40) -> bytes:
    a = np.zeros((h, w, 4), np.uint8)
    a[..., 0] = 200  # red-ish, half transparent
    a[..., 3] = 128
    return encode(Image.fromarray(a, "RGBA"), "PNG")


def png16(w=40, h=40) -> bytes:
    a = np.tile(np.array([0, 32768, 65535, 1000], np.uint16), (h, w // 4))
    return encode(Image.fromarray(a), "PNG")


def corrupt() -> bytes:
    return b"\xff\xd8\xff\xe0 definitely not a jpeg" + bytes(range(200))


def truncated_jpeg() -> bytes:
    data = jpeg(256, 256, seed=5)
    return data[: len(data) // 2]


def caption_records(n: int, seed: int = 0, words=("cat", "dog", "tree", "sun", "boat")) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(2, 6))))
        out.append(records.Record("caption", f"cap-{i}", "test", [
            records.image_segment(png(16, 16, seed=i), "png", 16, 16), records.text_segment(text)]))
    return out
