"""imgclf.training.report: what `imgclf evaluate` prints and draws."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from imgclf.training.report import EvalReport, confusion_figure, evaluate_images


class Fixed:
    """A classifier whose answers are given: a fake for this module's unit tests."""

    def __init__(self, labels: list[str], probs: np.ndarray) -> None:
        self.labels = labels
        self.probs = probs

    def probabilities(self, images, batch_size: int = 32) -> np.ndarray:
        return self.probs


def two_class_report() -> EvalReport:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    return evaluate_images(
        Fixed(["cat", "dog"], probs), [None] * 3, np.array([0, 0, 1]), ["cat", "dog"]
    )


def test_top5_is_left_out_for_five_classes_or_fewer() -> None:
    report = two_class_report()
    assert report.top5_accuracy is None
    assert report.format().splitlines()[0] == "images 3  accuracy 1.0000"
    probs = np.eye(6)[[0, 1, 2]]
    six = evaluate_images(
        Fixed(list("abcdef"), probs), [None] * 3, np.array([0, 1, 2]), list("abc")
    )
    assert six.top5_accuracy == 1.0 and "top-5 accuracy 1.0000" in six.format()


def test_confusion_matrix_shows_zero_cells_and_its_whole_title() -> None:
    fig = confusion_figure(two_class_report())
    fig.canvas.draw()
    ax = fig.axes[0]
    cells = sorted(t.get_text() for t in ax.texts)
    assert cells == ["0", "0", "1", "2"]  # dog never mistaken for cat: a 0 is shown
    title = ax.title.get_window_extent(fig.canvas.get_renderer())
    figure = fig.bbox
    assert ax.title.get_text() == "accuracy 1.0000 on 3 images"
    assert figure.x0 <= title.x0 and title.x1 <= figure.x1  # not cut off at 2 classes
