"""Class activation maps on the request path: what a request asks (`ExplainRequest`), its
checks against the model, what one image's run leaves behind (`Probe`: the feature row and the
photo's sizes), and the maps computed from those with numpy (imgclf.models.cam).

A model explains when its head is global pooling + one linear layer (found at load:
imgclf.models.explainable); for any other head a request for maps is refused with
FAILED_PRECONDITION saying what the head is. Occlusion sensitivity, which would work for any
head, is not offered: it turns one request into dozens of forward passes, which the queue's
admission and deadlines (sized per image) could not account for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgclf.errors import ExplainUnsupported, InvalidInput
from imgclf.models import cam
from imgclf.models.loader import ServedModel

Box = tuple[float, float, float, float]
"""(left, top, right, bottom) in the pixels of the image a client sent."""


@dataclass(frozen=True)
class ExplainRequest:
    """Maps for an image's `top_k` most probable classes, or for the named `classes`."""

    top_k: int = 0
    classes: tuple[int, ...] = ()

    @property
    def wanted(self) -> bool:
        return bool(self.top_k or self.classes)

    @property
    def count(self) -> int:
        return len(self.classes) if self.classes else self.top_k


NO_EXPLAIN = ExplainRequest()


@dataclass(frozen=True)
class ClassMap:
    index: int
    label: str
    probability: float
    values: np.ndarray
    """float32 [h, w] in [0, 1], at the feature resolution (e.g. 7x7)."""
    box: Box
    """The region of the image the map covers (the model's center crop)."""


@dataclass(frozen=True)
class Explanation:
    width: int
    height: int
    """The image's upright size in pixels (a tensor input: the model's input size)."""
    maps: list[ClassMap]


class Probe:
    """What one explained image's run leaves: its row of the feature tensor (set by the
    worker's batch, imgclf.runtime.batchqueue.TakeFeatures) and, for an encoded image, its
    full and decoded upright sizes (set by the decode, imgclf.imaging.Sizes)."""

    def __init__(self) -> None:
        self.features: np.ndarray | None = None
        self.full: tuple[int, int] | None = None
        self.decoded: tuple[int, int] | None = None

    def take_features(self, row: np.ndarray) -> None:
        self.features = row

    def sizes(self, full: tuple[int, int], decoded: tuple[int, int]) -> None:
        self.full, self.decoded = full, decoded


def check_explain(model: ServedModel, request: ExplainRequest, max_classes: int) -> None:
    """Refuse a request for maps the model cannot give or the limits do not allow, before
    any work."""
    if not request.wanted:
        return
    if model.explaining.head is None:
        raise ExplainUnsupported(
            f"model {model.name} version {model.version} gives no class activation maps: "
            f"{model.explaining.why_not}"
        )
    if request.top_k < 0 or request.count > max_classes:
        raise InvalidInput(
            f"explain asks for {request.count} maps per image; between 1 and {max_classes} "
            "may be asked (--max-explain-classes)",
            reason="bad_explain",
        )
    classes = model.num_classes
    for index in request.classes:
        if not 0 <= index < classes:
            raise InvalidInput(
                f"explain names class {index}; the model has classes 0 to {classes - 1}",
                reason="bad_explain",
            )


def box_of(model: ServedModel, probe: Probe) -> tuple[tuple[int, int], Box]:
    """The image's upright size and the region of it the model saw: the center crop, mapped
    back through a draft decode's scale; a tensor input is the model's view itself."""
    spec = model.metadata.preprocessing
    if probe.full is None or probe.decoded is None:
        h, w = spec.input_size
        return (w, h), (0.0, 0.0, float(w), float(h))
    (full_w, full_h), (dec_w, dec_h) = probe.full, probe.decoded
    left, top, right, bottom = cam.crop_box(dec_w, dec_h, spec)
    sx, sy = full_w / dec_w, full_h / dec_h
    return probe.full, (left * sx, top * sy, right * sx, bottom * sy)


def explanations(
    model: ServedModel,
    probabilities: np.ndarray,
    probes: Sequence[Probe],
    request: ExplainRequest,
) -> list[Explanation]:
    """The maps of each image's requested classes, from the feature rows its run left."""
    head = model.explaining.head
    assert head is not None, "checked before the run"
    if request.classes:
        classes = np.tile(np.asarray(request.classes, np.int64), (len(probes), 1))
    else:  # the top k, most probable first (ties: lower index first), as top_k orders them
        classes = np.argsort(-probabilities, axis=1, kind="stable")[:, : request.top_k]
    if any(p.features is None for p in probes):
        raise RuntimeError("an explained image came back without its features")
    features = np.stack([p.features for p in probes])
    maps = cam.class_maps(features, head.weight, classes)
    labels = model.metadata.labels
    out = []
    for n, probe in enumerate(probes):
        (width, height), box = box_of(model, probe)
        out.append(
            Explanation(
                width=width,
                height=height,
                maps=[
                    ClassMap(int(c), labels[c], float(probabilities[n, c]), maps[n, j], box)
                    for j, c in enumerate(classes[n])
                ],
            )
        )
    return out
