"""imgclf.training.data.datasets / .folders: image-folder trees, the split, and a folder
training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imgclf.training import evaluate, export, train  # noqa: E402
from imgclf.training.config import preprocessing_from_args, resolve_args  # noqa: E402
from imgclf.training.data.datasets import ImageDataset, format_class_counts, load_split  # noqa: E402
from imgclf.training.data.digits import load_digits_images  # noqa: E402
from imgclf.training.data.presets import EvalPreset  # noqa: E402


def write_tree(root: Path, per_class: int, offset: int = 0) -> None:
    """Digits 0, 1 and 2 as PNG files under root/<class>/, named so they sort by index."""
    images, labels, _ = load_digits_images()
    for digit, name in ((0, "zero"), (1, "one"), (2, "two")):
        idx = np.flatnonzero(labels == digit)[offset : offset + per_class]
        (root / name).mkdir(parents=True)
        for i in idx:
            images[i].save(root / name / f"{i:04d}.png")


@pytest.fixture(scope="module")
def split_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    write_tree(root / "train", 8)
    write_tree(root / "val", 3, offset=8)
    return root


def test_train_and_val_folders(split_tree: Path) -> None:
    split = load_split("folder", split_tree)
    assert split.class_names == ["one", "two", "zero"]  # sorted, as ImageFolder
    assert len(split.train_samples) == 24 and len(split.val_samples) == 9
    assert split.val_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    table = format_class_counts(split)
    assert "one" in table and table.splitlines()[-1].split() == ["total", "24", "9"]
    spec = preprocessing_from_args(resolve_args(train.parse_args([])))
    ds = ImageDataset(split.val_samples, split.val_labels, EvalPreset(spec))
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and y == 1


def test_one_tree_is_split_stratified(tmp_path: Path) -> None:
    write_tree(tmp_path, 10)
    split = load_split("folder", tmp_path, val_fraction=0.2, seed=0)
    assert np.bincount(split.val_labels).tolist() == [2, 2, 2]
    assert not set(split.train_samples) & set(split.val_samples)
    again = load_split("folder", tmp_path, val_fraction=0.2, seed=0)
    assert again.val_samples == split.val_samples


def test_folder_of_unknown_class_is_refused(split_tree: Path, tmp_path: Path) -> None:
    from imgclf.training.data.folders import list_images

    with pytest.raises(ValueError, match="label set lacks: zero"):
        list_images(split_tree / "val", ["one", "two"])


def test_train_export_evaluate_on_a_folder(split_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["--data-path", str(split_tree), "--model", "digits_cnn_w4", "--epochs", "1"]
    argv += ["--input-size", "16", "--resize-size", "16", "-j", "0", "-b", "8"]
    assert train.main([*argv, "--output-dir", str(run), "--no-progress"]) == 0
    args = json.loads((run / "args.json").read_text())
    assert args["dataset"] == "folder" and args["augmentation"] == "imagenet"
    repo = tmp_path / "models"
    ckpt = str(run / "best.pth")
    argv = [ckpt, "--name", "abc", "--model-repository", str(repo), "--legacy-exporter"]
    assert export.main(argv) == 0
    out = tmp_path / "eval"
    model = str(repo / "abc")
    assert evaluate.main([model, "--data-path", str(split_tree), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 9 and set(metrics["per_class"]) == {"one", "two", "zero"}


def test_unreadable_files_are_reported_and_skipped(
    split_tree: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(split_tree, tree)
    good = next((tree / "train" / "one").iterdir())
    (tree / "train" / "one" / "empty.png").write_bytes(b"")
    (tree / "train" / "two" / "notes.jpg").write_text("not an image")
    (tree / "val" / "zero" / "cut.png").write_bytes(good.read_bytes()[:60])  # truncated PNG
    # A truncated JPEG passes the header check and fails only when decoded, in training.
    from tests.images import encode

    jpeg = encode(load_digits_images()[0][0].resize((64, 64)), "JPEG")
    (tree / "train" / "zero" / "cut.jpg").write_bytes(jpeg[:-20])

    split = load_split("folder", tree)
    assert sorted(Path(p).name for p, _ in split.skipped) == ["cut.png", "empty.png", "notes.jpg"]
    assert len(split.train_samples) == 25 and len(split.val_samples) == 9

    run = tmp_path / "run"
    argv = ["--data-path", str(tree), "--model", "digits_cnn_w4", "--epochs", "1", "-b", "32"]
    argv += ["--input-size", "16", "--resize-size", "16", "-j", "0", "--no-progress"]
    assert train.main([*argv, "--output-dir", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "skipped 3 unreadable image file(s)" in out and "notes.jpg" in out
    assert "skipping unreadable image" in err and "cut.jpg" in err
    assert len((run / "skipped_images.txt").read_text().splitlines()) == 3
    ckpt = torch.load(run / "checkpoint.pth", weights_only=True)
    assert ckpt["data"] == {"train_images": 25, "val_images": 9, "skipped_files": 3}

    from imgclf.training.evaluate import load_eval_set

    images, labels, _ = load_eval_set(None, tree, "val")
    assert len(images) == len(labels) == 9  # cut.png skipped with a warning
    assert "cut.png" in capsys.readouterr().err
