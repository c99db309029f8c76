"""train -> export -> evaluate through their CLI entry points, on the digits, one epoch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from service.modelmeta import ModelMetadata  # noqa: E402
from training import evaluate, export, train  # noqa: E402
from training.utils import HISTORY_FIELDS  # noqa: E402


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs, interrupted after the first and resumed from checkpoint.pth."""
    out = tmp_path_factory.mktemp("run")
    argv = [
        "--dataset", "digits", "--model", "digits_cnn_w4", "--epochs", "2", "-b", "128",
        "--lr", "0.05", "-j", "0", "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    real_write = train.write_history

    def write_then_stop(path: Path, rows: list[dict[str, float]]) -> None:
        real_write(path, rows)
        raise Interrupted

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "write_history", write_then_stop)
        with pytest.raises(Interrupted):
            train.main(argv)
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert train.main([*argv, "--resume", str(out / "checkpoint.pth")]) == 0
    return out


def test_training_writes_every_artefact(run_dir: Path) -> None:
    for name in ("checkpoint.pth", "best.pth", "history.csv", "loss.png", "accuracy.png"):
        assert (run_dir / name).stat().st_size > 0, name
    args = json.loads((run_dir / "args.json").read_text())
    assert args["model"] == "digits_cnn_w4" and args["input_size"] == 32
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert tuple(rows[0]) == HISTORY_FIELDS
    # cosine over two epochs, the second one after the resume: 0.05, then 0.025
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.025])


def test_checkpoint_loads_with_weights_only(run_dir: Path) -> None:
    ckpt = torch.load(run_dir / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["class_names"] == [str(d) for d in range(10)]
    assert ckpt["preprocessing"]["input_size"] == [32, 32]
    assert 0.0 <= ckpt["val_acc"] <= ckpt["best_val_acc"] <= 1.0
    assert {"model", "optimizer", "lr_scheduler", "args"} <= set(ckpt)


def test_export_then_evaluate_cli(run_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    ckpt = str(run_dir / "checkpoint.pth")
    argv = [ckpt, "--name", "digits", "--model-repository", str(repo), "--num-samples", "4"]
    assert export.main(argv) == 0
    assert export.main(argv) == 0  # the next free version
    assert export.main([*argv, "--version", "1"]) == 1  # exists, no --force
    model = repo / "digits" / "2" / "model.onnx"
    classifier = evaluate.OnnxClassifier(repo / "digits")
    assert classifier.path == model
    meta: ModelMetadata = classifier.metadata
    assert meta.provenance["architecture"] == "digits_cnn_w4"
    assert meta.provenance["val_accuracy"] == pytest.approx(
        torch.load(ckpt, weights_only=True)["val_acc"]
    )

    out = tmp_path / "eval"
    assert evaluate.main([str(model), "--dataset", "digits", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 360 and set(metrics["per_class"]) == set("0123456789")
    assert metrics["top5_accuracy"] >= metrics["accuracy"]
    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert len(rows) == 11 and sum(int(v) for row in rows[1:] for v in row[1:11]) == 360
    assert (out / "confusion_matrix.png").stat().st_size > 0
    args = [str(model), "--dataset", "digits", "--output-dir", str(out), "--no-plot"]
    assert evaluate.main([*args, "--min-accuracy", "1.01"]) == 1
