"""Image decoding and the eval preprocessing, exactly as training's eval preset does it.

This module is the single definition of "how an image becomes a model input": the training
package's eval preset calls these functions, so what the server computes for a photo is
bit-for-bit what the model was validated on.

The steps follow torchvision's classification eval preset on PIL images:
``Resize(resize_size)`` (shorter side, the longer side truncated like torchvision),
``CenterCrop(input_size)`` (rounded offsets), ``ToTensor`` (/255) and ``Normalize(mean, std)``.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgclf.budget import MemoryBudget
from imgclf.errors import InvalidInput

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
"""The decoders the server uses; other formats Pillow knows (TIFF, EPS, DDS, ...) are refused,
which keeps their parsers (and Ghostscript) off the serving path."""

DEFAULT_MAX_PIXELS = 40_000_000
"""Refuse images that declare more pixels than this, before decoding them."""

# Our own limit (max_pixels) is checked from the header before any pixel is decoded; Pillow's
# global bomb check would pre-empt it with a vaguer error and cap max_pixels at its value.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: the eval preset, in numbers."""

    input_size: tuple[int, int]
    """(height, width) of the tensor the model takes."""
    resize_size: int
    """The shorter side is resized to this before the center crop."""
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.resize_size < min(self.input_size):
            raise ValueError(
                f"resize_size {self.resize_size} is smaller than input_size {self.input_size}"
            )


DECODE_BYTES_PER_PIXEL = 8
"""The decode memory budget per image: at most this many bytes per pixel (the pixels as
Pillow stores the decoded mode, at most 4, plus the 8-bit L or RGB image they become, at most
4), plus the strips of the 8-bit conversion and the decoder's state, reserved from the
header before decoding (see decode_cost). With the default --max-pixels of 40 M, one image
may take at most about 350 MB while it is decoded."""
DECODE_OVERHEAD_BYTES = 1024 * 1024
"""Per decode, beside the pixels and the strips: the decoder's own state."""

_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
"""Bytes per pixel of a decoded Pillow image by mode; every other mode takes 4."""

_GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
"""Modes that become 8-bit grey (L), resized as such and made RGB last (the same bits as
converting first: every band is resized alike)."""

_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_STRIP_ROWS = 256
"""Rows converted at a time from 16/32-bit grey to 8 bits (bounds the temporary arrays)."""
_STRIP_BYTES_PER_PIXEL = 16
"""Temporaries per pixel of a strip: the cropped rows, their array, float64 for 32-bit grey."""

_TO_8BIT_16 = ((np.arange(65536, dtype=np.uint64) * 255 + 32767) // 65535).astype(np.uint8)
"""16-bit -> 8-bit grey, rounded: the same bits as floor(v / 65535 * 255 + 0.5)."""


def decode_cost(mode: str, width: int, height: int) -> int:
    """Bytes one image of this mode and size takes while it is decoded and made 8-bit:
    its pixels as stored plus the L (grey modes) or RGB image they become (Pillow keeps RGB
    at 4 bytes per pixel), the strips of the conversion and DECODE_OVERHEAD_BYTES. At most
    DECODE_BYTES_PER_PIXEL per pixel beside the strips and the overhead."""
    out = 1 if mode in _GREY_MODES else 4
    strips = _STRIP_ROWS * width * _STRIP_BYTES_PER_PIXEL
    return width * height * (_STORED_BYTES.get(mode, 4) + out) + strips + DECODE_OVERHEAD_BYTES


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_shorter_side: int = 0,
    hold: Callable[[int], None] | None = None,
) -> Image.Image:
    """Decode encoded image bytes (JPEG, PNG, WebP, BMP, GIF, ...) to an upright RGB image
    (see decode_8bit)."""
    return to_rgb(decode_8bit(data, max_pixels, min_shorter_side, hold))


Sizes = Callable[[tuple[int, int], tuple[int, int]], None]
"""Told an image's upright (width, height) in full and as decoded (smaller after a draft
decode): what a client needs to place the model's view on the photo it sent."""


def decode_8bit(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_shorter_side: int = 0,
    hold: Callable[[int], None] | None = None,
    sizes: Sizes | None = None,
) -> Image.Image:
    """Decode encoded image bytes to an upright 8-bit image: L for grey modes (16-bit, 32-bit,
    float, bilevel, grey with alpha), RGB for every other.

    Raises InvalidInput for anything that is not a complete, decodable image within the pixel
    limit. The pixel limit is checked from the header, before the pixels are decoded; so is
    the memory the decode takes: `hold(decode_cost(...))` is called first, and may refuse by
    raising (the caller releases what it held once it is done with the image).
    With `min_shorter_side`, a JPEG at least twice that size is decoded in the DCT domain at
    1/2, 1/4 or 1/8 scale, never below it (draft mode): a 12-MP photo bound for a 256-pixel
    resize decodes at 1/8 of the work.
    """
    if not data:
        raise InvalidInput("image is empty (0 bytes)", reason="empty_image")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = img.size
        if width * height > max_pixels:
            raise InvalidInput(
                f"image is {width}x{height} = {width * height} pixels, "
                f"over the limit of {max_pixels}",
                reason="image_too_large",
            )
        if min_shorter_side and img.format == "JPEG":
            shorter = min(width, height)
            if shorter >= 2 * min_shorter_side:
                scale = min_shorter_side / shorter
                img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput(
            "bytes are not a decodable image (JPEG, PNG, WebP, BMP, GIF)",
            reason="undecodable_image",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure is the input's fault, never ours
        raise InvalidInput(
            f"image could not be decoded: {exc}", reason="undecodable_image"
        ) from None
    if hold is not None:
        hold(decode_cost(img.mode, *img.size))
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidInput(
            f"image could not be decoded: {exc}", reason="undecodable_image"
        ) from None
    turn = _orientation(img)
    img = to_8bit(img)
    img = img.transpose(turn) if turn is not None else img
    if sizes is not None:
        turned = turn in _SWAPPING_AXES
        sizes((height, width) if turned else (width, height), img.size)
    return img


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """The transposition the EXIF orientation asks for; a corrupt EXIF block: none."""
    try:
        return _ORIENTATIONS.get(img.getexif().get(0x0112, 1))
    except MemoryError:
        raise
    except Exception:
        return None


_SWAPPING_AXES = (
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a corrupt EXIF block leaves the image as stored."""
    turn = _orientation(img)
    return img.transpose(turn) if turn is not None else img


def to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8 bits per channel: L for grey modes (alpha dropped), RGB otherwise.

    16-bit grey is scaled by 255/65535 and rounded; 32-bit integer grey the same when any
    value is above 255 (else taken as is); float grey is clipped and rounded by Pillow. The
    conversion runs in strips of rows, never through a full-size wider array."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode in ("LA", "La", "1", "F"):
        return img.convert("L")
    if mode.startswith("I"):
        if mode == "I":
            low, high = img.getextrema()
            if low >= 0 and high <= 255:  # type: ignore[operator]
                return img.convert("L")
            peak = 65535.0 if high > 255 else 255.0  # type: ignore[operator]
        else:
            peak = 0.0
        out = np.empty((img.height, img.width), dtype=np.uint8)
        for top in range(0, img.height, _STRIP_ROWS):
            strip = np.asarray(img.crop((0, top, img.width, min(img.height, top + _STRIP_ROWS))))
            if peak:
                out[top : top + len(strip)] = np.clip(strip / peak * 255.0 + 0.5, 0, 255)
            else:
                out[top : top + len(strip)] = _TO_8BIT_16[strip]
        return Image.fromarray(out)
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) to RGB; alpha is dropped."""
    img = to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """The (width, height) after resizing the shorter side to `shorter`, as torchvision does."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def resize_and_crop(img: Image.Image, spec: Preprocessing) -> Image.Image:
    """Resize the shorter side to spec.resize_size, then center-crop to spec.input_size."""
    crop_h, crop_w = spec.input_size
    new_w, new_h = resized_size(img.width, img.height, spec.resize_size)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), INTERPOLATIONS[spec.interpolation])
    top = round((new_h - crop_h) / 2.0)
    left = round((new_w - crop_w) / 2.0)
    if (left, top, crop_w, crop_h) != (0, 0, new_w, new_h):
        img = img.crop((left, top, left + crop_w, top + crop_h))
    return img


@functools.lru_cache(maxsize=64)
def _levels(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: what `normalize` gives each 8-bit level of each channel, computed
    with the same float32 operations, so a lookup is bit-for-bit the arithmetic."""
    scale = np.float32(1.0 / 255.0)
    levels = np.arange(256, dtype=np.float32) * scale
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    inv_std = (1.0 / np.asarray(std, dtype=np.float32)).reshape(3, 1)
    table = ((levels[None, :] - m) * inv_std).astype(np.float32)
    table.flags.writeable = False
    return table


def normalize(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """uint8 HWC RGB pixels -> float32 CHW, scaled to [0, 1] and normalised by mean/std: one
    table lookup per channel (256 levels), several times cheaper than the arithmetic on a
    224x224 image and bit-for-bit equal to it."""
    table = _levels(tuple(spec.mean), tuple(spec.std))
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.uint8)
    out = np.empty(chw.shape, dtype=np.float32)
    for c in range(3):
        np.take(table[c], chw[c], out=out[c])
    return out


def preprocess_image(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """A decoded image -> the float32 CHW tensor the model takes (the eval preset)."""
    img = resize_and_crop(to_rgb(img), spec)
    return normalize(np.asarray(img, dtype=np.uint8), spec)


DRAFT_MARGIN = 2
"""Draft decoding keeps at least this many times the resize's shorter side, so the resize
still downsamples at least 2x through its own antialiasing filter. Measured on six photos at
12 MP with EfficientNet-Lite0: with margin 1 (decode just covering the resize) the top-1
changed on 2 of 6 against a full decode (near-ties), max probability change 0.04; with 2, 6 of
6 agree, max change 0.018, and the decode takes 31 ms instead of 17 (a full decode: 120)."""


def pixels_from_bytes(
    data: bytes,
    spec: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_draft: bool = False,
    budget: MemoryBudget | None = None,
    sizes: Sizes | None = None,
) -> np.ndarray:
    """Encoded image bytes -> uint8 HWC RGB pixels, resized and center-cropped to the input
    size: the eval preset up to, not including, the normalisation (which a uint8 model does
    in its graph).

    Grey images are resized as 8-bit grey and made RGB after the crop (the same bits, a third
    of the memory). `jpeg_draft` lets large JPEGs decode at a reduced scale that still covers
    DRAFT_MARGIN times the resize (see decode_8bit); results then differ slightly from a full
    decode (not the same bits). With a `budget`, the decode's memory (decode_cost, from the
    header) is reserved from it before decoding, or refused (MemoryExhausted), and held until
    the image is cropped. `sizes` is told the image's sizes (see Sizes)."""
    min_side = DRAFT_MARGIN * spec.resize_size if jpeg_draft else 0
    held = 0

    def hold(nbytes: int) -> None:
        nonlocal held
        if budget is not None:
            budget.reserve(nbytes, "decoding an image")
            held = nbytes

    try:
        img = decode_8bit(data, max_pixels, min_side, hold, sizes)
        img = resize_and_crop(img, spec)
    finally:
        if held:  # Pillow's large image blocks are mapped and unmapped: no heap to trim
            budget.release(held, trim=False)  # type: ignore[union-attr]
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def preprocess_bytes(
    data: bytes,
    spec: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_draft: bool = False,
    budget: MemoryBudget | None = None,
    sizes: Sizes | None = None,
) -> np.ndarray:
    """Encoded image bytes -> the float32 CHW tensor the model takes (see pixels_from_bytes)."""
    return normalize(pixels_from_bytes(data, spec, max_pixels, jpeg_draft, budget, sizes), spec)
