"""imgclf.training.gallery: the most confident mistakes of `imgclf evaluate`, with their maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from imgclf.models import cam
from imgclf.training import evaluate
from imgclf.training.gallery import (
    GALLERY_FILE,
    PANEL_HEIGHT,
    Mistake,
    confident_mistakes,
)
from tests.conftest import BUNDLED_MODELS
from tests.tiny_model import make_tiny_model
from tests.unit.training.trees import photo

DIGITS = BUNDLED_MODELS / "digits"
TOP, GAP = 24, 4
"""The sheet's title strip and the gap under each row (imgclf.training.gallery)."""


def test_the_most_confident_mistakes_come_first() -> None:
    probs = np.array(
        [
            [0.9, 0.1, 0.0],  # right
            [0.2, 0.7, 0.1],  # wrong, 0.7
            [0.05, 0.05, 0.9],  # wrong, 0.9
            [0.1, 0.7, 0.2],  # wrong, 0.7: after image 1 (tie, later)
            [0.3, 0.3, 0.4],  # right
        ]
    )
    truth = np.array([0, 0, 1, 2, 2])
    assert confident_mistakes(probs, truth, 8) == [
        Mistake(2, predicted=2, truth=1),
        Mistake(1, predicted=1, truth=0),
        Mistake(3, predicted=1, truth=2),
    ]
    assert confident_mistakes(probs, truth, 2) == [Mistake(2, 2, 1), Mistake(1, 1, 0)]
    assert confident_mistakes(probs[[0, 4]], truth[[0, 4]], 8) == []


def test_evaluate_draws_the_digits_model_mistakes_with_both_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundled digits model on every built-in digit: each mistake is a row of two panels,
    the predicted class's map and the true class's, that differ where the maps differ."""
    out = tmp_path / "eval"
    argv = [str(DIGITS), "--dataset", "digits", "--split", "all", "--no-plot"]
    assert evaluate.main([*argv, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    model = evaluate.OnnxClassifier(DIGITS)
    images, labels, _ = evaluate.load_eval_set("digits", None, "all")
    probs = model.probabilities(images)
    mistakes = confident_mistakes(probs, labels, 8)
    assert mistakes, "the digits model makes mistakes on the 1797 digits"
    wrong = int((probs.argmax(axis=1) != labels).sum())
    assert f"{len(mistakes)} most confident of {wrong} mistakes on 1797 images" in printed

    sheet = np.asarray(Image.open(out / GALLERY_FILE).convert("RGB")).astype(np.int16)
    assert sheet.shape[0] == TOP + len(mistakes) * (PANEL_HEIGHT + GAP)
    head = cam.find_head(model.path.read_bytes())
    session = cam.explaining_session(model.path.read_bytes(), head)
    for row, m in enumerate(mistakes):
        (features,) = session.run([head.feature], {"input": model.preprocess([images[m.image]])})
        maps = cam.class_maps(features, head.weight, np.array([[m.predicted, m.truth]]))[0]
        y = TOP + row * (PANEL_HEIGHT + GAP)
        panels = sheet[y + 20 : y + PANEL_HEIGHT, : 2 * PANEL_HEIGHT]  # below the captions
        predicted, true = panels[:, :PANEL_HEIGHT], panels[:, PANEL_HEIGHT:]
        plain = np.asarray(
            images[m.image].convert("RGB").resize((PANEL_HEIGHT,) * 2, Image.Resampling.NEAREST)
        ).astype(np.int16)[20:]
        # Both maps are drawn over the photo, and where they differ the panels differ.
        assert np.abs(predicted - plain).max() > 64 and np.abs(true - plain).max() > 64
        assert np.abs(maps[0] - maps[1]).max() > 0.25
        assert np.abs(predicted - true).mean() > 2.0


def test_no_gallery_for_a_head_without_maps_nor_when_turned_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model whose head is flatten + linear: the evaluation runs, the gallery is skipped
    with the reason; `--gallery 0` skips it silently."""
    model = make_tiny_model(tmp_path / "tiny" / "1" / "model.onnx", head="flatten")
    data = tmp_path / "photos"
    for label, name in (("red", "coffee"), ("green", "chelsea"), ("blue", "rocket")):
        (data / label).mkdir(parents=True)
        photo(name).save(data / label / f"{name}.png")
    argv = [str(model), "--data-path", str(data), "--split", "all", "--no-plot"]
    assert evaluate.main([*argv, "--output-dir", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "no gallery of mistakes: the model gives no class activation maps (head is not " in (
        printed
    )
    assert not (tmp_path / "a" / GALLERY_FILE).exists()
    assert evaluate.main([*argv, "--output-dir", str(tmp_path / "b"), "--gallery", "0"]) == 0
    assert "mistakes" not in capsys.readouterr().out
    assert not (tmp_path / "b" / GALLERY_FILE).exists()
