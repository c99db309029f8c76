"""imgclf.training.train: artefacts, exact resume (model, optimizer, warm-up + cosine schedule, EMA,
RNG), early stopping, freezing and unfreezing, --test-only, TensorBoard, then export/evaluate
through their CLI entry points."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
import yaml  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from imgclf.modelmeta import ModelMetadata  # noqa: E402
from imgclf.training import evaluate, export, train  # noqa: E402
from imgclf.training.loop.monitor import EMA_FIELDS, HISTORY_FIELDS  # noqa: E402
from tests.unit.training.trees import write_digits_tree  # noqa: E402

ARGV = [
    "--dataset", "lfw_faces", "--model", "digits_cnn_w4", "--epochs", "3", "-b", "32",
    "--lr", "0.05", "--lr-warmup-epochs", "1", "--model-ema", "--model-ema-decay", "0.9",
    "--patience", "5", "-j", "0", "--no-progress",
]  # fmt: skip


class Interrupted(Exception):
    pass


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same three epochs run straight through, and interrupted after the second epoch
    (right after its checkpoint was written) then resumed from checkpoint.pth."""
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    assert train.main([*ARGV, "--output-dir", str(straight)]) == 0
    real_write = train.write_history

    def write_then_stop(path: Path, history: list[dict[str, float]]) -> None:
        real_write(path, history)
        if len(history) == 2:
            raise Interrupted

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "write_history", write_then_stop)
        with pytest.raises(Interrupted):
            train.run([*ARGV, "--output-dir", str(resumed)])
    assert load(resumed / "checkpoint.pth")["epoch"] == 2
    argv = [*ARGV, "--output-dir", str(resumed), "--resume", str(resumed / "checkpoint.pth")]
    assert train.main(argv) == 0
    return straight, resumed


def test_training_writes_every_artefact(runs: tuple[Path, Path]) -> None:
    run = runs[0]
    for name in ("checkpoint.pth", "best.pth", "history.csv", "loss.png", "accuracy.png"):
        assert (run / name).stat().st_size > 0, name
    args = json.loads((run / "args.json").read_text())
    assert args["model"] == "digits_cnn_w4" and args["input_size"] == 32
    assert yaml.safe_load((run / "args.yaml").read_text()) == args
    history = rows(run)
    assert tuple(history[0]) == HISTORY_FIELDS + EMA_FIELDS
    assert [r["epoch"] for r in history] == ["1", "2", "3"]
    # one warm-up epoch from lr x 0.01, then cosine over the two others: 0.0005, 0.05, 0.025
    assert [float(r["lr"]) for r in history] == pytest.approx([0.0005, 0.05, 0.025])


def test_resume_continues_exactly_where_training_stopped(runs: tuple[Path, Path]) -> None:
    straight, resumed = runs
    a, b = rows(straight), rows(resumed)
    for key in (*HISTORY_FIELDS, *EMA_FIELDS):
        if key != "time_s":
            assert [r[key] for r in a] == [r[key] for r in b], key
    ca, cb = load(straight / "checkpoint.pth"), load(resumed / "checkpoint.pth")
    for part in ("model", "model_ema"):
        for name, tensor in ca[part].items():
            assert torch.equal(tensor, cb[part][name]), (part, name)
    assert ca["model_ema_updates"] == cb["model_ema_updates"] == 3 * 5  # 160 images, b 32
    momentum_a = [s["momentum_buffer"] for s in ca["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in cb["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b, strict=True))
    assert ca["lr_scheduler"]["last_epoch"] == cb["lr_scheduler"]["last_epoch"] == 3
    assert ca["state"] == cb["state"] and ca["state"]["step"] == 15


def test_checkpoint_loads_with_weights_only(runs: tuple[Path, Path]) -> None:
    ckpt = load(runs[0] / "checkpoint.pth")
    assert ckpt["epoch"] == 3 and ckpt["class_names"] == ["face", "not_face"]
    assert ckpt["preprocessing"]["input_size"] == [32, 32]
    assert ckpt["monitor"] == "ema_val_acc" and ckpt["val_acc"] == ckpt["metrics"]["ema_val_acc"]
    assert 0.0 <= ckpt["val_acc"] <= ckpt["best_val_acc"] <= 1.0
    assert ckpt["data"] == {"train_images": 160, "val_images": 40, "skipped_files": 0}
    assert {"model", "optimizer", "lr_scheduler", "args", "scaler", "rng"} <= set(ckpt)
    best = load(runs[0] / "best.pth")
    assert best["epoch"] == best["best_epoch"] and best["val_acc"] == ckpt["best_val_acc"]


def test_test_only_validates_a_checkpoint(runs: tuple[Path, Path], capsys) -> None:
    ckpt = runs[0] / "checkpoint.pth"
    argv = [*ARGV, "--output-dir", str(runs[0] / "t"), "--resume", str(ckpt), "--test-only"]
    result = train.train(train.parse_args(argv))
    out = capsys.readouterr().out
    assert result.final_val_acc == pytest.approx(load(ckpt)["metrics"]["val_acc"])
    assert "test-only: val loss" in out and "EMA val loss" in out
    assert not (runs[0] / "t" / "history.csv").exists()


def test_early_stopping_and_resuming_a_stopped_run(tmp_path: Path, capsys) -> None:
    argv = ["--dataset", "lfw_faces", "--model", "digits_cnn_w4", "--epochs", "6", "-b", "64"]
    argv += ["--lr", "0", "--patience", "1", "-j", "0", "--no-progress"]
    argv += ["--output-dir", str(tmp_path)]
    result = train.train(train.parse_args(argv))  # lr 0: nothing improves after epoch 1
    assert result.stopped_early and result.epochs == 2 and result.best_epoch == 1
    assert "early stopping: no improvement for 1 epochs" in capsys.readouterr().out
    again = train.train(train.parse_args([*argv, "--resume", str(tmp_path / "checkpoint.pth")]))
    assert again.epochs == 2 and len(rows(tmp_path)) == 2  # a stopped run stays stopped


def test_transfer_freeze_then_unfreeze_with_a_faster_head(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """digits_cnn weights of the face/not-face run, fine-tuned on a folder of three digits: the
    head is new, the backbone frozen for the first epoch, then trained (after a resume)."""
    tree = write_digits_tree(tmp_path / "tree", (0, 1, 2), per_class=20, split="train")
    source = runs[0] / "checkpoint.pth"
    run = tmp_path / "run"
    argv = ["--data-path", str(tree), "--model", "digits_cnn_w4", "--weights", str(source)]
    argv += ["--freeze-backbone", "--unfreeze-at-epoch", "1", "--head-lr-mult", "10"]
    argv += ["--epochs", "2", "--lr", "0.01", "-b", "16", "-j", "0", "--no-progress"]
    argv += ["--output-dir", str(run)]
    real_write = train.write_history

    def write_then_stop(path: Path, history: list[dict[str, float]]) -> None:
        real_write(path, history)
        raise Interrupted

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "write_history", write_then_stop)
        with pytest.raises(Interrupted):
            train.run(argv)
    frozen = load(run / "checkpoint.pth")
    src = load(source)["model"]
    assert torch.equal(frozen["model"]["0.0.weight"], src["0.0.weight"])  # backbone kept
    assert torch.equal(frozen["model"]["0.1.running_mean"], src["0.1.running_mean"])  # BN too
    assert frozen["model"]["10.weight"].shape == (3, 16)  # a new 3-class head
    assert src["10.weight"].shape == (2, 16)
    groups = {g["name"]: g["lr"] for g in frozen["optimizer"]["param_groups"]}
    assert groups["head"] == pytest.approx(10 * groups["backbone"])

    assert train.main([*argv, "--resume", str(run / "checkpoint.pth")]) == 0
    unfrozen = load(run / "checkpoint.pth")
    assert unfrozen["epoch"] == 2
    assert not torch.equal(unfrozen["model"]["0.0.weight"], src["0.0.weight"])


def test_freeze_until_a_layer(tmp_path: Path, capsys) -> None:
    argv = ["--dataset", "digits", "--model", "digits_cnn_w4", "--freeze-until", "3"]
    argv += ["--epochs", "1", "-b", "256", "-j", "0", "--no-progress", "--test-only"]
    train.train(train.parse_args([*argv, "--output-dir", str(tmp_path)]))
    # conv-BN blocks 0 (108 + 8), 1 (144 + 8) and 3 (288 + 16) frozen: 572 of 2518
    assert "2,518 parameters, 1,946 trainable" in capsys.readouterr().out
    with pytest.raises(ValueError, match="top-level layers: 0, 1, 3, 4, 6, 10"):
        train.train(train.parse_args([*argv[:5], "nope", *argv[6:], "--output-dir", "x"]))


def test_tensorboard_is_skipped_cleanly_when_not_installed(tmp_path: Path, capsys) -> None:
    argv = ["--dataset", "lfw_faces", "--model", "digits_cnn_w4", "--epochs", "1", "-b", "64"]
    argv += ["-j", "0", "--no-progress", "--tensorboard", "--output-dir", str(tmp_path)]
    assert train.main(argv) == 0
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "TensorBoard is not installed" in capsys.readouterr().out
        assert not (tmp_path / "tensorboard").exists()
    else:
        assert any((tmp_path / "tensorboard").iterdir())


def test_export_then_evaluate_cli(runs: tuple[Path, Path], tmp_path: Path) -> None:
    repo = tmp_path / "models"
    ckpt = str(runs[0] / "checkpoint.pth")
    argv = [ckpt, "--name", "faces", "--model-repository", str(repo), "--num-samples", "4"]
    assert export.main([*argv, "--legacy-exporter"]) == 0
    assert export.main([*argv, "--legacy-exporter"]) == 0  # the next free version
    assert export.main([*argv, "--version", "1"]) == 1  # exists, no --force
    model = repo / "faces" / "2" / "model.onnx"
    classifier = evaluate.OnnxClassifier(repo / "faces")
    assert classifier.path == model
    meta: ModelMetadata = classifier.metadata
    assert meta.provenance["architecture"] == "digits_cnn_w4"
    assert meta.provenance["exported_weights"] == "EMA"  # what the run validated
    assert meta.provenance["val_accuracy"] == pytest.approx(load(Path(ckpt))["val_acc"])
    assert meta.provenance["opset"] == 17 and meta.provenance["exporter"].endswith("(legacy)")

    out = tmp_path / "eval"
    assert evaluate.main([str(model), "--dataset", "lfw_faces", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 40 and set(metrics["per_class"]) == {"face", "not_face"}
    assert metrics["accuracy"] == pytest.approx(meta.provenance["val_accuracy"])
    assert metrics["top5_accuracy"] is None  # two classes: top-5 says nothing
    table = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert len(table) == 3 and sum(int(v) for row in table[1:] for v in row[1:3]) == 40
    assert (out / "confusion_matrix.png").stat().st_size > 0
    args = [str(model), "--dataset", "lfw_faces", "--output-dir", str(out), "--no-plot"]
    assert evaluate.main([*args, "--min-accuracy", "1.01"]) == 1


def int8_argv(ckpt: str, repo: Path) -> list[str]:
    """``imgclf export --precision int8`` of the faces run, with bars a 3-epoch model near
    chance can meet (its near-ties flip; the digits model has the real bars,
    tests/unit/training/onnx/test_quantize.py)."""
    return [ckpt, "--name", "faces", "--model-repository", str(repo), "--num-samples", "4",
            "--legacy-exporter", "--precision", "int8", "--calibration-images", "40",
            "--gate-max-top1-drop", "20", "--gate-max-class-recall-drop", "40"]  # fmt: skip


def test_export_precision_int8_writes_a_gated_variant_or_nothing(
    runs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    repo = tmp_path / "models"
    ckpt = str(runs[0] / "checkpoint.pth")
    argv = int8_argv(ckpt, repo)
    assert export.main([*argv, "--gate-min-agreement", "100.1"]) == 1  # an impossible bar
    captured = capsys.readouterr()  # the report of a failed command is on stderr
    out = captured.out + captured.err
    assert "failed the accuracy gate, nothing written" in out and "dB of SQNR" in out
    assert "INT8 weights alone leave" in out  # the layers ranked by their weights, too
    assert "--qat-epochs N" in out  # and the way that usually passes
    assert not repo.exists() or not any(repo.iterdir())  # no version, no staging folder left

    assert export.main([*argv, "--gate-min-agreement", "80"]) == 0
    version = repo / "faces" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.int8.onnx", "model.onnx"]
    assert [p.name for p in repo.iterdir()] == ["faces"]
    int8 = evaluate.OnnxClassifier(version / "model.int8.onnx").metadata.provenance
    assert int8["precision"] == "int8"
    assert int8["calibration"]["images"] == 40 and int8["calibration"]["seed"] == 0
    gate = int8["accuracy_gate"]
    assert gate["passed"] and gate["images"] == 40 and gate["thresholds"]["min_agreement"] == 80
    assert gate["float_accuracy"] == pytest.approx(100 * load(Path(ckpt))["val_acc"])


def initializers(path: Path) -> dict:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_export_int8_after_quantisation_aware_training(
    runs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    from imgclf.training.models.fakequant import PerChannelWeights

    repo = tmp_path / "models"
    ckpt = str(runs[0] / "checkpoint.pth")
    argv = [*int8_argv(ckpt, repo), "--gate-min-agreement", "80"]
    assert export.main([*argv, "--version", "1"]) == 0  # post-training only
    assert export.main([*argv, "--version", "2", "--qat-epochs", "2", "--qat-lr", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "qat epoch 2/2: distillation loss" in out
    plain, qat = repo / "faces" / "1", repo / "faces" / "2"
    meta = evaluate.OnnxClassifier(qat / "model.int8.onnx").metadata.provenance
    record = meta["calibration"]["quantization_aware_training"]
    assert record["epochs"] == 2 and record["lr"] == 1e-4 and record["seed"] == 0
    assert record["images"] == 160 and record["batch_norm"] == "frozen (eval mode)"
    # the gate compared the INT8 model with the float model that ships, the checkpoint's
    gate = meta["accuracy_gate"]
    assert gate["passed"] and gate["float_accuracy"] == pytest.approx(
        100 * load(Path(ckpt))["val_acc"]
    )
    floats_plain, floats_qat = initializers(plain / "model.onnx"), initializers(qat / "model.onnx")
    assert floats_plain.keys() == floats_qat.keys()
    assert all(np.array_equal(floats_plain[k], floats_qat[k]) for k in floats_plain)
    conv = next(v for v in floats_qat.values() if v.ndim == 4)  # not on the 8-bit grid
    assert not torch.equal(PerChannelWeights()(torch.tensor(conv)), torch.tensor(conv))
    # while the INT8 weights are the fine-tuned copy's, not those of the post-training recipe
    int8_plain = initializers(plain / "model.int8.onnx")
    int8_qat = initializers(qat / "model.int8.onnx")
    weights = [k for k, v in int8_qat.items() if v.dtype == np.int8]
    assert weights and any(not np.array_equal(int8_plain[k], int8_qat[k]) for k in weights)
