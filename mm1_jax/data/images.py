"""Images: checked (and converted where needed) at conversion, decoded and resized in the pipeline.

Conversion keeps the original encoded bytes whenever the pipeline can decode them as they are
(RGB or grayscale JPEG/PNG/WebP), so a corpus holds what the user had, not a re-encoded copy.
Everything else that can be made RGB (CMYK, palette, alpha, 16-bit, 1-bit, other containers) is
converted once and re-encoded; what cannot is skipped with a reason the conversion summary counts.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from mm1_jax import config

FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
# The names are config's (config.INTERPOLATIONS, validated there); bicubic is CLIP's.
INTERPOLATIONS = {name: getattr(Image.Resampling, name.upper()) for name in config.INTERPOLATIONS}
RESIZE_MODES = config.RESIZE_MODES
# Modes PIL converts to RGB without losing meaning (alpha is composited on white first).
_ALPHA_MODES = ("RGBA", "LA", "PA", "P", "RGBa", "La")
_COLOR_MODES = ("CMYK", "YCbCr", "LAB", "HSV", "1")
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """Sizes a converter accepts; anything outside is skipped as an absurd size."""

    min_side: int = 8  # smaller images carry no information at 224-378 px
    max_pixels: int = 64_000_000  # about 8000x8000; larger are usually scans or bombs
    max_aspect: float = 20.0  # banners and strips; a center crop would keep a sliver


class ImageSkip(Exception):
    """An image the converter must skip; `reason` is a summary key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str  # one of records.IMAGE_FORMATS
    width: int
    height: int
    converted_from: str | None  # the source mode/format when re-encoded, else None


def check_image(data: bytes | None, limits: ImageLimits = ImageLimits()) -> CheckedImage:
    """Validates encoded image bytes fully (a truncated file fails here, not mid-training).

    Returns the original bytes when they are usable as they are, otherwise an RGB re-encoding
    (PNG, or JPEG for JPEG sources); raises ImageSkip(reason) for what cannot be used.
    """
    if not data:
        raise ImageSkip("empty_image")
    with warnings.catch_warnings():
        # Pillow warns (and above 2x its limit raises) on huge images; our own limit decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageSkip("absurd_size", str(e)) from e
        except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError in plugins
            raise ImageSkip("corrupt_image", str(e)) from e
        w, h = im.size
        if min(w, h) < limits.min_side or w * h > limits.max_pixels or (
                max(w, h) > limits.max_aspect * min(w, h)):
            raise ImageSkip("absurd_size", f"{w}x{h}")
        try:
            im.load()  # full decode: catches truncated and corrupt data
        except Exception as e:
            raise ImageSkip("corrupt_image", str(e)) from e

    fmt = FORMATS.get(im.format or "")
    if fmt is not None and im.mode in ("RGB", "L"):
        return CheckedImage(data, fmt, w, h, None)
    rgb = _to_rgb(im)
    out = io.BytesIO()
    if im.format == "JPEG":
        rgb.save(out, format="JPEG", quality=95)
        fmt = "jpeg"
    else:
        rgb.save(out, format="PNG")
        fmt = "png"
    return CheckedImage(out.getvalue(), fmt, w, h, converted_from=f"{im.format}/{im.mode}")


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("RGB", "L"):
        return im.convert("RGB")
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _COLOR_MODES:
        return im.convert("RGB")
    if mode in _HIGH_DEPTH_MODES:
        # PIL's convert("L") clips 16-bit values at 255 (a white image); rescale the range.
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "RGB;16" or mode == "F":
        a = np.asarray(im).astype(np.float64)
        top = max(float(a.max()), 1.0)
        return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8)).convert("RGB")
    raise ImageSkip("unsupported_mode", mode)


# ---------------------------------------------------------------------------------- pipeline


def decode_resize(data: bytes, size: int, interpolation: str = "bicubic",
                  mode: str = "center_crop") -> np.ndarray:
    """Decodes encoded bytes to uint8 [size, size, 3].

    center_crop (CLIP): the central square of the image, scaled to size x size. Cropping in source
    coordinates inside `resize(box=...)` gives the same geometry as CLIP's resize-short-side then
    center-crop, and resamples only the kept pixels. squash: the whole image scaled to a square.
    """
    im = Image.open(io.BytesIO(data))
    if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: phone photos are stored rotated
        im = ImageOps.exif_transpose(im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if mode == "center_crop":
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        box = (left, top, left + side, top + side)
    else:
        box = (0, 0, w, h)
    im = im.resize((size, size), INTERPOLATIONS[interpolation], box=box)
    return np.asarray(im, dtype=np.uint8)
