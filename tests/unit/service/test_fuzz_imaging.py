"""Property-based tests of the decode/preprocess path (imgclf.imaging) with hypothesis.

Whatever bytes arrive, decode_image / preprocess_bytes either return a well-formed result or
raise InvalidInput: any other exception would reach the client as INTERNAL. Valid images of any
size and mode preprocess to exactly the model input. Deterministic (derandomize, no example
database) and bounded (200 examples per property); `benchmarks/fuzz_decode.py` runs the same
properties (the same seeds and mutations) for as long as you like.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks.fuzz_decode import EDIT_OPS, MAGICS, apply_edits, seed_images
from imgclf.errors import InvalidInput
from imgclf.imaging import Preprocessing, decode_image, preprocess_bytes
from tests.images import encode
from tests.unit.service.support import png_declaring

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPEC = Preprocessing(input_size=(16, 16), resize_size=18, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
MAX_PIXELS = 1_000_000
REASONS = {"empty_image", "undecodable_image", "image_too_large"}
SEEDS = seed_images()
EDIT = st.tuples(
    st.sampled_from(EDIT_OPS),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    st.binary(min_size=1, max_size=8),
)


def check_bytes(data: bytes, jpeg_draft: bool = False) -> np.ndarray | None:
    """preprocess_bytes on `data`: its tensor, or None after InvalidInput with a known reason."""
    try:
        tensor = preprocess_bytes(data, SPEC, max_pixels=MAX_PIXELS, jpeg_draft=jpeg_draft)
    except InvalidInput as exc:
        assert exc.reason in REASONS, exc.reason
        assert str(exc)
        return None
    assert_model_input(tensor, SPEC)
    return tensor


def assert_model_input(tensor: np.ndarray, spec: Preprocessing) -> None:
    """Shape (3, H, W) of the spec, float32, finite, within the normalised range."""
    assert tensor.shape == (3, *spec.input_size)
    assert tensor.dtype == np.float32
    assert np.isfinite(tensor).all()
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    assert (tensor >= (0 - mean) / std - 1e-4).all()
    assert (tensor <= (1 - mean) / std + 1e-4).all()


@FUZZ
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_invalid_input(data: bytes) -> None:
    check_bytes(data)


@FUZZ
@given(magic=st.sampled_from(MAGICS), rest=st.binary(max_size=2048))
def test_bytes_behind_a_real_header_raise_only_invalid_input(magic: bytes, rest: bytes) -> None:
    check_bytes(magic + rest)


@FUZZ
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(EDIT, min_size=1, max_size=6),
    jpeg_draft=st.booleans(),
)
def test_mutated_real_images_raise_only_invalid_input(
    seed: str, edits: list[tuple[str, float, bytes]], jpeg_draft: bool
) -> None:
    check_bytes(apply_edits(SEEDS[seed], edits), jpeg_draft)


def test_unmutated_seeds_decode() -> None:
    for name, data in SEEDS.items():
        assert check_bytes(data) is not None, name


# mode -> formats Pillow can write it in
WRITABLE = {
    "RGB": ["JPEG", "PNG", "WEBP", "BMP", "GIF"],
    "L": ["JPEG", "PNG", "WEBP", "BMP", "GIF"],
    "LA": ["PNG", "WEBP"],
    "RGBA": ["PNG", "WEBP"],
    "P": ["PNG", "GIF", "BMP"],
    "1": ["PNG", "BMP", "GIF"],
    "CMYK": ["JPEG"],
    "I;16": ["PNG"],
}


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[bytes, tuple[int, int]]:
    """An encoded image of random size, mode, format and content: (bytes, (width, height))."""
    width = draw(st.integers(1, 160))
    height = draw(st.integers(1, 160))
    mode = draw(st.sampled_from(sorted(WRITABLE)))
    fmt = draw(st.sampled_from(WRITABLE[mode]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        base = Image.fromarray(pixels, "RGBA")
        img = base.convert(mode) if mode != "LA" else base.convert("LA")
    return encode(img, fmt), (width, height)


@st.composite
def specs(draw: st.DrawFn) -> Preprocessing:
    h = draw(st.integers(1, 40))
    w = draw(st.integers(1, 40))
    resize = draw(st.integers(min(h, w), 48))
    mean = tuple(draw(st.floats(0.0, 1.0)) for _ in range(3))
    std = tuple(draw(st.floats(0.05, 2.0)) for _ in range(3))
    interpolation = draw(st.sampled_from(["nearest", "bilinear", "bicubic", "lanczos"]))
    return Preprocessing((h, w), resize, interpolation, mean, std)  # type: ignore[arg-type]


@FUZZ
@given(image=valid_images(), spec=specs(), jpeg_draft=st.booleans())
def test_valid_images_of_any_size_and_mode_become_the_model_input(
    image: tuple[bytes, tuple[int, int]], spec: Preprocessing, jpeg_draft: bool
) -> None:
    data, size = image
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    assert decoded.mode == "RGB" and decoded.size == size
    tensor = preprocess_bytes(data, spec, max_pixels=MAX_PIXELS, jpeg_draft=jpeg_draft)
    assert_model_input(tensor, spec)


@FUZZ
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_pixel_limit_is_checked_from_the_header(width: int, height: int) -> None:
    """A header declaring more than max_pixels is refused as too large (its pixel data is
    bogus, so decoding first would fail differently); within the limit it never is."""
    try:
        decode_image(png_declaring(width, height), max_pixels=MAX_PIXELS)
    except InvalidInput as exc:
        assert (exc.reason == "image_too_large") == (width * height > MAX_PIXELS), exc
    else:
        assert width * height <= MAX_PIXELS


def test_undocumented_formats_are_refused() -> None:
    """Only the documented formats (JPEG, PNG, WebP, BMP, GIF) reach a decoder: a DDS whose
    pixel format Pillow does not implement raises NotImplementedError, and TIFF/EPS/... bring
    libtiff and Ghostscript within a client's reach."""
    dds = bytearray(encode(Image.new("RGB", (8, 8), (200, 0, 0)), "DDS"))
    dds[80:84] = bytes(4)  # DDS_PIXELFORMAT.dwFlags: unknown
    for data in (bytes(dds), encode(Image.new("RGB", (8, 8), (200, 0, 0)), "TIFF")):
        try:
            decode_image(data)
        except InvalidInput as exc:
            assert exc.reason == "undecodable_image"
        else:
            raise AssertionError(f"decoded an undocumented format: {data[:4]!r}")


def test_corrupt_exif_does_not_escape_as_an_internal_error() -> None:
    """A PNG/WebP whose EXIF block is not TIFF data: Pillow raises SyntaxError from
    exif_transpose, which runs outside decode_image's error mapping."""
    not_tiff = b"Exif\x00\x00this is not TIFF data"
    for fmt in ("PNG", "WEBP"):
        data = encode(Image.new("RGB", (8, 8), (200, 0, 0)), fmt, exif=not_tiff)
        check_bytes(data)
