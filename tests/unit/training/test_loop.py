"""imgclf.training.loop.epoch: progress bars are for terminals, not log files."""

from __future__ import annotations

import os
import pty
import sys

import pytest

torch = pytest.importorskip("torch")

from imgclf.training.loop.distributed import DistInfo  # noqa: E402
from imgclf.training.loop.epoch import StepOptions, _batches  # noqa: E402


def options(progress: bool = True) -> StepOptions:
    return StepOptions(device=torch.device("cpu"), dist=DistInfo(), progress=progress)


def test_no_progress_bar_when_stderr_is_a_file(tmp_path, monkeypatch) -> None:
    with (tmp_path / "train.log").open("w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        bar = _batches([1, 2, 3], "epoch 1/1 train", options())
        assert bar.disable
        assert list(bar) == [1, 2, 3]
    assert "\r" not in (tmp_path / "train.log").read_text()


def test_progress_bar_on_a_terminal_unless_turned_off(monkeypatch) -> None:
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            assert not _batches([1], "x", options()).disable
            assert _batches([1], "x", options(progress=False)).disable
    finally:
        os.close(leader)
        os.close(follower)
