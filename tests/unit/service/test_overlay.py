"""imgclf.overlay: the map blended over its box of the photo, captioned, one panel per map."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from imgclf.overlay import (
    Heat,
    blend,
    colours,
    overlay,
    overlay_names,
    png_bytes,
    write_overlay,
)
from tests.images import encode

GREY = (128, 128, 128)


def photo(size: tuple[int, int] = (60, 40)) -> Image.Image:
    return Image.new("RGB", size, GREY)


def test_colours_run_from_blue_to_red() -> None:
    low, high = colours(np.array([[0.0, 1.0]]))[0]
    assert low[2] > low[0] and high[0] > high[2]  # cold blue, hot red
    assert colours(np.array([[np.nan, 2.0, -1.0]])).dtype == np.uint8


def test_blend_touches_only_the_box_and_only_where_the_map_is_hot() -> None:
    values = np.zeros((2, 2), np.float32)
    values[0, 1] = 1.0  # top right hot
    out = np.asarray(blend(photo(), Heat(values, (10, 0, 50, 40), "x", 0.5)), dtype=np.int16)
    changed = np.abs(out - np.array(GREY)).sum(axis=2) > 0
    assert not changed[:, :10].any() and not changed[:, 50:].any()  # outside the box
    assert changed[5, 45] and not changed[35, 12]  # hot corner tinted, cold corner not
    cold = blend(photo(), Heat(np.zeros((7, 7)), (0, 0, 60, 40), "x", 0.1))
    assert np.array_equal(np.asarray(cold), np.asarray(photo()))


def test_overlay_puts_a_captioned_panel_per_map_side_by_side() -> None:
    heats = [Heat(np.eye(7), (0, 0, 60, 40), f"class {i}", 0.25) for i in range(3)]
    sheet = overlay(photo(), heats)
    assert sheet.size == (180, 40)
    top_left = np.asarray(sheet)[:12, :40]
    assert (top_left == 0).any() and top_left.max() > 200  # the caption strip and its text
    with pytest.raises(ValueError):
        overlay(photo(), [])


def test_write_overlay_from_class_map_messages(tmp_path: Path) -> None:
    message = SimpleNamespace(values=[0.0, 0.5, 1.0, 0.2], height=2, width=2,
                              box=[0, 0, 30, 20], label="cat", probability=0.9)  # fmt: skip
    data = encode(np.full((20, 30, 3), 90, np.uint8), "PNG")
    out = write_overlay(tmp_path / "out", "photo.cam.png", data, [message, message])
    assert out == tmp_path / "out" / "photo.cam.png"
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (60, 20)
    assert Image.open(io.BytesIO(png_bytes(photo()))).size == (60, 40)


def test_overlay_names_never_collide() -> None:
    images = [Path("a/cat.jpg"), Path("dog.jpg"), Path("b/cat.png"), Path("c/cat.webp")]
    names = overlay_names(images)
    assert names == {
        Path("a/cat.jpg"): "cat.1.cam.png",
        Path("dog.jpg"): "dog.cam.png",
        Path("b/cat.png"): "cat.2.cam.png",
        Path("c/cat.webp"): "cat.3.cam.png",
    }
    assert len(set(names.values())) == len(images)
