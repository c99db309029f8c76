"""The evaluation report: accuracy, top-5, per-class precision/recall/F1 and the confusion
matrix, printed and written as metrics.json, confusion_matrix.csv and confusion_matrix.png.
Torch-free."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from imgclf.usererror import UserError


class Classifier(Protocol):
    """What evaluation needs of a model: its labels and probabilities for images."""

    @property
    def labels(self) -> list[str]: ...

    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray: ...


@dataclass
class EvalReport:
    num_images: int
    accuracy: float
    top5_accuracy: float | None
    """None when the model has 5 classes or fewer (top-5 would be 1.0 by construction)."""
    class_names: list[str]
    """The evaluated classes (rows of the confusion matrix)."""
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: np.ndarray
    """Rows: true class; columns: predicted class, plus '(other)' when the model names others."""
    confusion_columns: list[str] = field(default_factory=list)
    probabilities: np.ndarray | None = field(default=None, repr=False)
    """(N, model classes): what the model answered for each image, in order."""
    truth: np.ndarray | None = field(default=None, repr=False)
    """(N,): each image's true class as the model's class index."""

    def format(self) -> str:
        width = max(12, *(len(n) for n in self.class_names))
        top5 = "" if self.top5_accuracy is None else f"  top-5 accuracy {self.top5_accuracy:.4f}"
        lines = [
            f"images {self.num_images}  accuracy {self.accuracy:.4f}{top5}",
            f"{'class':<{width}}  precision  recall     f1  support",
        ]
        for i, name in enumerate(self.class_names):
            lines.append(
                f"{name:<{width}}  {self.precision[i]:9.4f}  {self.recall[i]:6.4f}  "
                f"{self.f1[i]:5.4f}  {self.support[i]:7d}"
            )
        lines.append(
            f"{'macro avg':<{width}}  {np.mean(self.precision):9.4f}  "
            f"{np.mean(self.recall):6.4f}  {np.mean(self.f1):5.4f}  {sum(self.support):7d}"
        )
        return "\n".join(lines)


def evaluate_images(
    classifier: Classifier,
    images: Sequence[Image.Image],
    labels: np.ndarray,
    class_names: list[str],
    batch_size: int = 32,
) -> EvalReport:
    """Score `images` whose true classes are `class_names[labels]` (matched to model labels)."""
    model_index = {name: i for i, name in enumerate(classifier.labels)}
    unknown = [n for n in class_names if n not in model_index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        known = ", ".join(classifier.labels[:8]) + (", ..." if len(classifier.labels) > 8 else "")
        raise UserError(
            f"the model has no label for the class folder(s) {shown} of the evaluation data",
            f"evaluate on images of the classes it was trained on ({known})",
        )
    truth = np.asarray([model_index[class_names[i]] for i in labels])
    probs = classifier.probabilities(images, batch_size)
    pred = probs.argmax(axis=1)
    k = min(5, probs.shape[1])
    top5 = np.argsort(-probs, axis=1)[:, :k]
    evaluated = sorted(set(truth.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=evaluated, zero_division=0
    )
    column = {m: j for j, m in enumerate(evaluated)}
    other = any(p not in column for p in pred.tolist())
    confusion = np.zeros((len(evaluated), len(evaluated) + int(other)), dtype=np.int64)
    for t, p in zip(truth.tolist(), pred.tolist(), strict=True):
        confusion[column[t], column.get(p, len(evaluated))] += 1
    names = [classifier.labels[m] for m in evaluated]
    return EvalReport(
        num_images=len(truth),
        accuracy=float((pred == truth).mean()),
        top5_accuracy=float((top5 == truth[:, None]).any(axis=1).mean())
        if k == 5 < probs.shape[1]
        else None,
        class_names=names,
        precision=[float(x) for x in precision],
        recall=[float(x) for x in recall],
        f1=[float(x) for x in f1],
        support=[int(x) for x in support],
        confusion=confusion,
        confusion_columns=names + (["(other)"] if other else []),
        probabilities=probs,
        truth=truth,
    )


def write_outputs(report: EvalReport, out_dir: Path, plot: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "confusion_matrix.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *report.confusion_columns])
        for name, row in zip(report.class_names, report.confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    metrics = {
        "num_images": report.num_images,
        "accuracy": report.accuracy,
        "top5_accuracy": report.top5_accuracy,
        "per_class": {
            name: {
                "precision": report.precision[i],
                "recall": report.recall[i],
                "f1": report.f1[i],
                "support": report.support[i],
            }
            for i, name in enumerate(report.class_names)
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if plot:
        _plot_confusion(report, out_dir / "confusion_matrix.png")


def confusion_figure(report: EvalReport) -> Any:
    """The confusion matrix with a count in every cell (zeros included) under its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = report.confusion.shape
    size = min(12.0, max(4.5, 2.0 + 0.45 * n_cols))  # room for the title at 2 classes
    fig, ax = plt.subplots(figsize=(size, size * n_rows / n_cols + 0.5), dpi=100)
    ax.imshow(report.confusion, cmap="Blues")
    ax.set_xticks(range(n_cols), report.confusion_columns, rotation=90)
    ax.set_yticks(range(n_rows), report.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n_cols <= 30:
        peak = report.confusion.max()
        for (r, c), v in np.ndenumerate(report.confusion):
            colour = "white" if v > peak / 2 else "black"  # zero cells too: 0 is an answer
            ax.text(c, r, str(v), ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(f"accuracy {report.accuracy:.4f} on {report.num_images} images", fontsize=10)
    fig.tight_layout()
    return fig


def _plot_confusion(report: EvalReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = confusion_figure(report)
    fig.savefig(path)
    plt.close(fig)
