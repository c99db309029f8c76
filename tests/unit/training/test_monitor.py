"""imgclf.training.loop.monitor: the loss/accuracy plots people look at."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from imgclf.training.loop.monitor import history_figure


def test_epoch_ticks_are_whole_numbers() -> None:
    rows = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 0.5, "val_acc": 0.4}
        for e in (1, 2, 3)
    ]
    fig = history_figure(rows, "loss", "loss")
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks == [1.0, 2.0, 3.0]  # not 1.25, 1.5, ...
