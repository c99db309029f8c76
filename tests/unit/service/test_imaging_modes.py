"""imgclf.imaging: every Pillow mode decodes to the reference conversion at 8 bits per
channel, within the per-image decode memory budget."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.budget import MemoryBudget
from imgclf.errors import MemoryExhausted
from imgclf.imaging import (
    DECODE_BYTES_PER_PIXEL,
    DECODE_OVERHEAD_BYTES,
    Preprocessing,
    decode_cost,
    decode_image,
    pixels_from_bytes,
    resize_and_crop,
    to_rgb,
)

SPEC = Preprocessing(input_size=(24, 24), resize_size=28)
RNG = np.random.default_rng(12)


def reference_rgb(img: Image.Image) -> np.ndarray:
    """The conversion as it was before decoding went 8-bit: 16/32-bit grey through float64,
    palettes through RGBA, everything else by Pillow's convert."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(grey, "L").convert("RGB"))
    if img.mode in ("P", "PA"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(img.convert("RGBA").convert("RGB"))
    return np.asarray(img.convert("RGB"))


def grey16(mode: str, h: int = 37, w: int = 53) -> Image.Image:
    values = RNG.integers(0, 65536, (h, w), dtype=np.uint16)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, (w, h), values.astype(dtype).tobytes())


def rgb(h: int = 37, w: int = 53) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def palette_with_transparency() -> Image.Image:
    img = Image.fromarray(rgb()).quantize(colors=16)
    img.info["transparency"] = 3
    return img


MODES: dict[str, object] = {
    "I;16": lambda: grey16("I;16"),
    "I;16B": lambda: grey16("I;16B"),
    "I-wide": lambda: Image.fromarray(RNG.integers(-5, 70000, (37, 53), dtype=np.int32)),
    "I-narrow": lambda: Image.fromarray(RNG.integers(0, 256, (37, 53), dtype=np.int32)),
    "F": lambda: Image.fromarray(RNG.uniform(-20, 300, (37, 53)).astype(np.float32)),
    "CMYK": lambda: Image.fromarray(rgb()).convert("CMYK"),
    "P-transparency": palette_with_transparency,
    "PA": lambda: Image.fromarray(rgb()).quantize(colors=8).convert("PA"),
    "LA": lambda: Image.fromarray(rgb()).convert("LA"),
    "RGBA": lambda: Image.fromarray(rgb()).convert("RGBA"),
    "RGBX": lambda: Image.fromarray(rgb()).convert("RGBX"),
    "1": lambda: Image.fromarray(rgb()).convert("1"),
    "L": lambda: Image.fromarray(rgb()).convert("L"),
    "YCbCr": lambda: Image.fromarray(rgb()).convert("YCbCr"),
    "RGB": lambda: Image.fromarray(rgb()),
}


@pytest.mark.parametrize("name", MODES)
def test_every_mode_converts_like_the_reference(name: str) -> None:
    img = MODES[name]()  # type: ignore[operator]
    np.testing.assert_array_equal(np.asarray(to_rgb(img)), reference_rgb(img))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
@pytest.mark.parametrize("name", ["I;16", "LA", "1", "L", "P-transparency", "RGBA", "RGB"])
def test_decoded_pixels_are_the_eval_preset_of_the_reference(name: str, interpolation: str) -> None:
    """Through PNG and the serving path (grey resized as grey, RGB made last): the same bits as
    converting to RGB first and resizing that, as training's eval preset does."""
    img = MODES[name]()  # type: ignore[operator]
    buf = io.BytesIO()
    img.save(buf, "PNG")
    spec = Preprocessing(input_size=(24, 24), resize_size=28, interpolation=interpolation)
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    expected = np.asarray(resize_and_crop(Image.fromarray(reference_rgb(decoded)), spec))
    np.testing.assert_array_equal(pixels_from_bytes(buf.getvalue(), spec), expected)


def test_cmyk_jpeg_decodes_like_the_reference() -> None:
    buf = io.BytesIO()
    Image.fromarray(rgb()).convert("CMYK").save(buf, "JPEG", quality=95)
    expected = reference_rgb(Image.open(io.BytesIO(buf.getvalue())))
    np.testing.assert_array_equal(np.asarray(decode_image(buf.getvalue())), expected)


def test_decode_cost_stays_within_the_stated_bytes_per_pixel() -> None:
    for mode in ("1", "L", "P", "I;16", "I", "F", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
        pixels_and_state = 100 * 100 * DECODE_BYTES_PER_PIXEL + DECODE_OVERHEAD_BYTES
        assert decode_cost(mode, 100, 100) <= pixels_and_state + 256 * 100 * 16
    assert decode_cost("I;16", 10, 1000) > decode_cost("L", 10, 1000) > 10 * 1000


def test_a_decode_over_the_budget_is_refused_before_decoding_and_released_after() -> None:
    buf = io.BytesIO()
    Image.fromarray(rgb(400, 300)).save(buf, "PNG")
    cost = decode_cost("RGB", 300, 400)
    tight = MemoryBudget(cost - 1, trim=lambda: None)
    with pytest.raises(MemoryExhausted, match="memory budget"):
        pixels_from_bytes(buf.getvalue(), SPEC, budget=tight)
    assert tight.held == 0
    enough = MemoryBudget(cost, trim=lambda: None)
    assert pixels_from_bytes(buf.getvalue(), SPEC, budget=enough).shape == (24, 24, 3)
    assert enough.held == 0 and enough.peak == cost


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from imgclf.imaging import Preprocessing, pixels_from_bytes
    def peak_rss():  # VmHWM: this process image's high-water mark (ru_maxrss survives exec)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    spec = Preprocessing(input_size=(224, 224), resize_size=256)
    pixels_from_bytes(Path(sys.argv[2]).read_bytes(), spec)  # warm: libraries, arenas
    data = Path(sys.argv[1]).read_bytes()
    before = peak_rss()
    pixels = pixels_from_bytes(data, spec, max_pixels=40_000_000)
    after = peak_rss()
    assert pixels.shape == (224, 224, 3)
    print(after - before)
    """
)


def test_a_16bit_png_at_max_pixels_decodes_within_its_budget(tmp_path: Path) -> None:
    """The 90 KB 6300x6300 16-bit greyscale PNG once took 1.06 GB to decode (float64); its peak
    memory, measured in a fresh process (VmHWM), must stay within decode_cost."""
    side = 6300
    ramp = (np.arange(side, dtype=np.uint32) * 65535 // (side - 1)).astype(np.uint16)
    big = tmp_path / "grey16.png"
    Image.frombytes("I;16", (side, side), np.tile(ramp, (side, 1)).tobytes()).save(big)
    assert big.stat().st_size < 200_000 and Image.open(big).mode == "I;16"
    small = tmp_path / "small.png"
    Image.new("I;16", (300, 300)).save(small)
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(big), str(small)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    peak = int(out.stdout.split()[-1])
    budget = decode_cost("I;16", side, side)
    assert peak <= budget, f"decode peak {peak / 2**20:.0f} MiB > budget {budget / 2**20:.0f} MiB"
    assert peak > side * side * 2  # it did measure the decode (the 16-bit pixels alone)
