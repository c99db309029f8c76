"""The accuracy gate an INT8 (or any reduced-precision) variant must pass against its float
model, on the same images through ONNX Runtime: top-1 accuracy drop, top-1 agreement with the
float model, the largest per-class recall drop (with labels), and the largest probability
difference and the agreement on the images the float model decides clearly (reported, not
gated)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MAX_TOP1_DROP = 1.0
MIN_AGREEMENT = 98.0
MAX_CLASS_RECALL_DROP = 3.0
CLEAR_MARGIN = 0.1
"""A float top-1 probability this far above the runner-up is a clear decision: agreement on
near-ties says how noisy the images are more than how good the INT8 model is."""
EPSILON = 1e-9
"""Percentages are differences of float means: a drop of exactly the threshold passes."""


@dataclass(frozen=True)
class GateThresholds:
    max_top1_drop: float = MAX_TOP1_DROP
    """Points of top-1 accuracy the INT8 model may lose."""
    min_agreement: float = MIN_AGREEMENT
    """Percent of images whose top-1 class must equal the float model's."""
    max_class_recall_drop: float = MAX_CLASS_RECALL_DROP
    """Points of recall any one class may lose."""


@dataclass
class GateReport:
    images: int
    agreement: float
    """Percent of images with the float model's top-1 class."""
    max_prob_diff: float
    thresholds: GateThresholds
    clear_images: int = 0
    """Images whose float top-1 probability beats the runner-up by >= CLEAR_MARGIN."""
    clear_agreement: float | None = None
    """Percent of those with the float model's top-1 (reported, not gated); None if none."""
    float_accuracy: float | None = None
    """Percent top-1; None without labels."""
    int8_accuracy: float | None = None
    worst_class: str | None = None
    worst_class_recall_drop: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        text = f"on {self.images} images: top-1 agreement {self.agreement:.2f} %"
        if self.float_accuracy is not None:
            text += (
                f", top-1 {self.float_accuracy:.2f} % float -> {self.int8_accuracy:.2f} % int8 "
                f"(drop {self.float_accuracy - self.int8_accuracy:.2f} points), worst class "
                f"{self.worst_class!r} recall drop {self.worst_class_recall_drop:.2f} points"
            )
        text += f", max probability difference {self.max_prob_diff:.4f}"
        if self.clear_agreement is not None:
            text += (
                f", agreement {self.clear_agreement:.2f} % on the {self.clear_images} images "
                f"float decides by >= {CLEAR_MARGIN:g}"
            )
        verdict = "passed" if self.ok else "FAILED: " + "; ".join(self.failures)
        return f"{text}: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.ok
        return out


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def accuracy_gate(
    float_probs: np.ndarray,
    int8_probs: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    thresholds: GateThresholds | None = None,
) -> GateReport:
    """Compare the INT8 model's probabilities with the float model's on the same images
    (rows). With `labels`, also the top-1 accuracy drop and the per-class recall drops."""
    t = thresholds or GateThresholds()
    if float_probs.shape != int8_probs.shape or float_probs.ndim != 2 or not len(float_probs):
        raise ValueError(f"probabilities {float_probs.shape} vs {int8_probs.shape}")
    ref, got = float_probs.argmax(1), int8_probs.argmax(1)
    report = GateReport(
        images=len(ref),
        agreement=100.0 * float((ref == got).mean()),
        max_prob_diff=float(np.abs(float_probs - int8_probs).max()),
        thresholds=t,
    )
    ranked = np.sort(float_probs, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] >= CLEAR_MARGIN
    report.clear_images = int(clear.sum())
    if report.clear_images:
        report.clear_agreement = 100.0 * float((ref == got)[clear].mean())
    if report.agreement < t.min_agreement - EPSILON:
        report.failures.append(f"top-1 agreement {report.agreement:.2f} % < {t.min_agreement:g} %")
    if labels is None:
        return report
    labels = np.asarray(labels)
    report.float_accuracy = 100.0 * float((ref == labels).mean())
    report.int8_accuracy = 100.0 * float((got == labels).mean())
    drop = report.float_accuracy - report.int8_accuracy
    if drop > t.max_top1_drop + EPSILON:
        report.failures.append(f"top-1 accuracy drop {drop:.2f} > {t.max_top1_drop:g} points")
    worst, worst_drop = None, -np.inf
    for c in np.unique(labels):
        mask = labels == c
        class_drop = 100.0 * float((ref[mask] == c).mean() - (got[mask] == c).mean())
        if class_drop > worst_drop:
            worst, worst_drop = int(c), class_drop
    name = class_names[worst] if class_names is not None and worst is not None else str(worst)
    report.worst_class, report.worst_class_recall_drop = name, float(worst_drop)
    if worst_drop > t.max_class_recall_drop + EPSILON:
        report.failures.append(
            f"class {name!r} recall drop {worst_drop:.2f} > {t.max_class_recall_drop:g} points"
        )
    return report
