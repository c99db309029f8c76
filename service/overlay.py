"""A class activation map drawn over the photo it explains (numpy and Pillow only): the one
overlay of the CLI (`imgclf classify --explain DIR`), the HTTP endpoint's `?format=png` and
the evaluation gallery.

A map covers a box of the photo (the model's center crop, in the photo's pixels); it is
upsampled bilinearly to that box, coloured with a blue-cyan-yellow-red ramp, blended over the
box, and captioned with the class's label and probability. Several maps give one panel each,
side by side. Photos are drawn at most MAX_SIDE pixels on their longer side.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imgclf.imaging import decode_image

MAX_SIDE = 1600
"""The longest side of an overlay drawn (`fitted`): the drawing's float arrays grow with the
photo's pixels (a 40-MP photo would need gigabytes), and the picture is for a person."""

ALPHA = 0.5
"""Weight of the heatmap in the blend at full activation (none at zero: the photo shows
through where the class found nothing)."""

_RAMP = np.array(
    [
        [0.0, 0, 0, 128],
        [0.15, 0, 64, 255],
        [0.35, 0, 224, 255],
        [0.55, 128, 255, 96],
        [0.75, 255, 208, 0],
        [0.9, 255, 64, 0],
        [1.0, 160, 0, 0],
    ],
    dtype=np.float32,
)
"""Stops of the colour ramp: position in [0, 1], then R, G, B (a jet-like map)."""


@dataclass(frozen=True)
class Heat:
    """One class's map and where it lies on the photo."""

    values: np.ndarray
    """[h, w] in [0, 1]."""
    box: Sequence[float]
    """(left, top, right, bottom) in the photo's pixels."""
    label: str
    probability: float

    @classmethod
    def of(cls, class_map: Any) -> Heat:
        """From an imgclf.v1 ClassMap message (values row-major, height x width)."""
        values = np.asarray(class_map.values, dtype=np.float32)
        shape = (class_map.height, class_map.width)
        return cls(
            values.reshape(shape), list(class_map.box), class_map.label, class_map.probability
        )


def fitted(
    photo: Image.Image, heats: Sequence[Heat], full_width: int, max_side: int = MAX_SIDE
) -> tuple[Image.Image, list[Heat]]:
    """The photo shrunk to at most `max_side` pixels on its longer side, and the heats'
    boxes (in the pixels of the photo `full_width` pixels wide) moved onto it."""
    if max(photo.size) > max_side:
        photo.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    scale = photo.width / full_width
    return photo, [replace(h, box=[float(v) * scale for v in h.box]) for h in heats]


def colours(values: np.ndarray) -> np.ndarray:
    """[h, w] values in [0, 1] -> [h, w, 3] uint8 RGB along the ramp."""
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0)
    channels = [np.interp(v, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def blend(photo: Image.Image, heat: Heat, alpha: float = ALPHA) -> Image.Image:
    """The photo (RGB) with the map blended over its box."""
    out = photo.convert("RGB")
    left, top, right, bottom = (float(v) for v in heat.box)
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(out.width, round(right)), min(out.height, round(bottom))
    if x1 <= x0 or y1 <= y0:
        return out
    values = np.asarray(heat.values, dtype=np.float32)
    grid = Image.fromarray(values, mode="F").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
    v = np.clip(np.asarray(grid), 0.0, 1.0)[..., None]
    region = np.asarray(out.crop((x0, y0, x1, y1)), dtype=np.float32)
    mixed = region * (1 - alpha * v) + colours(v[..., 0]).astype(np.float32) * (alpha * v)
    out.paste(Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8)), (x0, y0))
    return out


def caption(img: Image.Image, text: str) -> Image.Image:
    """`text` in white on a dark strip along the top of the image (Pillow's default font)."""
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    _, _, right, bottom = draw.textbbox((4, 3), text, font=font)
    draw.rectangle((0, 0, min(img.width, right + 4), bottom + 3), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255), font=font)
    return img


def overlay(photo: Image.Image, heats: Sequence[Heat], alpha: float = ALPHA) -> Image.Image:
    """One panel per map (the photo with the map blended over it, captioned
    `label probability`), side by side."""
    if not heats:
        raise ValueError("no map to draw")
    panels = [
        caption(blend(photo, heat, alpha), f"{heat.label} {heat.probability:.1%}") for heat in heats
    ]
    width, height = panels[0].size
    sheet = Image.new("RGB", (width * len(panels), height))
    for i, panel in enumerate(panels):
        sheet.paste(panel, (i * width, 0))
    return sheet


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def overlay_names(images: Sequence[Path]) -> dict[Path, str]:
    """The overlay file of each image: <stem>.cam.png, or <stem>.<n>.cam.png (n from 1, in
    the order given) for stems that repeat (a/cat.jpg and b/cat.png), so none overwrites
    another."""
    stems = [image.stem for image in images]
    seen: dict[str, int] = {}
    names = {}
    for image in images:
        if stems.count(image.stem) == 1:
            names[image] = f"{image.stem}.cam.png"
        else:
            seen[image.stem] = seen.get(image.stem, 0) + 1
            names[image] = f"{image.stem}.{seen[image.stem]}.cam.png"
    return names


def write_overlay(folder: Path, name: str, data: bytes, maps: Sequence[Any]) -> Path:
    """`folder`/`name` (see overlay_names): the photo (`data`, upright) with each ClassMap
    of `maps` side by side; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / name
    photo = decode_image(data)
    photo, heats = fitted(photo, [Heat.of(m) for m in maps], photo.width)
    out.write_bytes(png_bytes(overlay(photo, heats)))
    return out
