"""The evaluation gallery: the validation images the model got wrong with the most confidence,
each shown with the class activation map of the class it chose and of the true class
(imgclf.models.cam for the maps, imgclf.overlay to draw them). Torch-free.

One row per image: the photo with the predicted class's map, then with the true class's map,
each captioned with the label and its probability; the most confident mistake first. Maps
exist for models whose head is global pooling + one linear layer; for any other head the
gallery is skipped and `write_gallery` says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imgclf.modelmeta import ModelMetadata
from imgclf.models import cam
from imgclf.overlay import Heat, overlay

GALLERY_FILE = "confident_mistakes.png"
PANEL_HEIGHT = 224
"""Every photo is drawn this tall (an 8x8 digit is enlarged, a big photo reduced)."""


class Explainable(Protocol):
    """What the gallery needs of an evaluated ONNX model (imgclf.training.evaluate)."""

    path: Path
    input_name: str
    metadata: ModelMetadata
    providers: Sequence[str]

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray: ...


@dataclass(frozen=True)
class Mistake:
    image: int
    """Position of the image among the evaluated ones."""
    predicted: int
    truth: int
    """Model class indices."""


def confident_mistakes(probabilities: np.ndarray, truth: np.ndarray, count: int) -> list[Mistake]:
    """Up to `count` wrongly classified images, the highest probability of the (wrong)
    predicted class first (ties: the earlier image first)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    confidence = probabilities[wrong, predicted[wrong]]
    chosen = wrong[np.argsort(-confidence, kind="stable")][:count]
    return [Mistake(int(i), int(predicted[i]), int(truth[i])) for i in chosen]


def _drawn(image: Image.Image, box: Sequence[float]) -> tuple[Image.Image, list[float]]:
    """The image scaled to PANEL_HEIGHT (nearest pixels when enlarged: a small image stays
    sharp) and the box scaled with it."""
    scale = PANEL_HEIGHT / image.height
    size = (max(1, round(image.width * scale)), PANEL_HEIGHT)
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return image.convert("RGB").resize(size, resample), [v * scale for v in box]


def _title(sheet: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), text, fill=(0, 0, 0), font=ImageFont.load_default())


def gallery(
    model: Explainable,
    images: Sequence[Image.Image],
    probabilities: np.ndarray,
    mistakes: Sequence[Mistake],
    title: str = "",
) -> Image.Image:
    """The gallery sheet of `mistakes` under `title` (HeadNotSupported when the model gives
    no maps)."""
    data = model.path.read_bytes()
    head = cam.find_head(data)
    session = cam.explaining_session(data, head, providers=model.providers)
    picked = [images[m.image] for m in mistakes]
    (features,) = session.run([head.feature], {model.input_name: model.preprocess(picked)})
    classes = np.array([[m.predicted, m.truth] for m in mistakes])
    maps = cam.class_maps(features, head.weight, classes)
    labels, spec = model.metadata.labels, model.metadata.preprocessing
    rows = []
    for n, (m, image) in enumerate(zip(mistakes, picked, strict=True)):
        photo, box = _drawn(image, cam.crop_box(image.width, image.height, spec))
        p = probabilities[m.image]
        heats = [
            Heat(maps[n, 0], box, f"predicted {labels[m.predicted]}", float(p[m.predicted])),
            Heat(maps[n, 1], box, f"true {labels[m.truth]}", float(p[m.truth])),
        ]
        rows.append(overlay(photo, heats))
    top, gap = 24, 4
    width = max(560, *(r.width for r in rows))
    sheet = Image.new("RGB", (width, top + sum(r.height + gap for r in rows)), (255, 255, 255))
    _title(sheet, title)
    y = top
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + gap
    return sheet


def write_gallery(
    model: Explainable,
    images: Sequence[Image.Image],
    probabilities: np.ndarray,
    truth: np.ndarray,
    path: Path,
    count: int,
) -> str:
    """Write the gallery of the `count` most confident mistakes to `path`; returns the line
    to print: what was written, or why nothing was."""
    mistakes = confident_mistakes(probabilities, truth, count)
    wrong = int((probabilities.argmax(axis=1) != truth).sum())
    shown = f"{len(mistakes)} most confident of {wrong} mistakes on {len(truth)} images"
    title = f"{shown}: map of the predicted class | of the true class"
    if not mistakes:
        return "no image was classified wrongly: no gallery of mistakes"
    try:
        sheet = gallery(model, images, probabilities, mistakes, title)
    except cam.HeadNotSupported as exc:
        return f"no gallery of mistakes: the model gives no class activation maps ({exc})"
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return f"wrote {path}: the {shown}, with their maps"
