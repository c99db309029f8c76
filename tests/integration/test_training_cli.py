"""`imgclf train/export/evaluate` mistakes as a person makes them, through the real CLI in a
subprocess: one line naming the file, folder or flag, a hint, exit 2 for usage and 1 for
failures, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from imgclf.client.bench.launcher import free_port
from tests.images import encode

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGITS_MODEL = REPO_ROOT / "models" / "digits"
CHECKPOINT_HINT = (
    "  hint: pass the checkpoint.pth or best.pth that `imgclf train` wrote into its "
    "--output-dir (default runs/train)"
)


def imgclf(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "imgclf.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300,
    )  # fmt: skip


def failure(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines a failure printed on stderr (warnings left out); never a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("imgclf "))
    return lines[start:]


def image_folder(root: Path, classes: list[str], per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
            (root / name / f"{i}.png").write_bytes(encode(pixels, "PNG"))
    return root


def test_export_of_a_missing_checkpoint(tmp_path: Path) -> None:
    proc = imgclf("export", "runs/nosuch/best.pth", "--name", "x", cwd=tmp_path)
    assert proc.returncode == 1
    assert failure(proc) == ["imgclf export: runs/nosuch/best.pth: no such file", CHECKPOINT_HINT]


def test_export_of_an_image_by_mistake(tmp_path: Path) -> None:
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    proc = imgclf("export", str(photo), "--name", "x", cwd=tmp_path)
    assert proc.returncode == 1
    assert failure(proc) == [
        f"imgclf export: {photo} is not a PyTorch checkpoint (it is a JPEG image)",
        CHECKPOINT_HINT,
    ]


def test_evaluate_of_a_missing_model(tmp_path: Path) -> None:
    proc = imgclf("evaluate", "models/nosuch", "--dataset", "digits", cwd=tmp_path)
    assert proc.returncode == 1
    assert failure(proc) == [
        "imgclf evaluate: models/nosuch: no such file or folder (nor in a numbered version "
        "folder under it)",
        "  hint: pass a model folder (models/NAME), a version folder (models/NAME/1) or a .onnx "
        "file; `ls models` lists the repository",
    ]


def test_evaluate_on_a_folder_of_other_classes(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "pets", ["cat", "dog"])
    proc = imgclf("evaluate", str(DIGITS_MODEL), "--data-path", str(data), cwd=tmp_path)
    assert proc.returncode == 1
    assert failure(proc) == [
        "imgclf evaluate: the model has no label for the class folder(s) cat, dog of the "
        "evaluation data",
        "  hint: evaluate on images of the classes it was trained on (0, 1, 2, 3, 4, 5, 6, 7, ...)",
    ]


def test_train_refuses_a_one_class_folder_before_training(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "only", ["cat"], per_class=6)
    out = tmp_path / "run"
    proc = imgclf("train", "--data-path", str(data), "--epochs", "1", "-j", "0",
                  "--output-dir", str(out), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert failure(proc) == [
        f"imgclf train: {data} has 1 class (cat): a classifier needs at least 2",
        "  hint: put one subfolder of images per class under it (DIR/<class>/*.jpg)",
    ]
    assert not (out / "checkpoint.pth").exists()


def test_train_refuses_an_unfreeze_that_never_happens(tmp_path: Path) -> None:
    proc = imgclf("train", "--dataset", "digits", "--freeze-backbone", "--unfreeze-at-epoch",
                  "5", "--epochs", "3", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert failure(proc) == [
        "imgclf train: --unfreeze-at-epoch 5 never happens in --epochs 3: the backbone would "
        "stay frozen throughout",
        "  hint: pass --unfreeze-at-epoch between 1 and 2, or more --epochs",
    ]


def test_offline_timm_weights_fail_at_once(tmp_path: Path) -> None:
    """No cached weights and the hub's port closed: the first connection attempt decides."""
    port = free_port()
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    proc = imgclf("train", "--dataset", "digits", "--model", "efficientnet_lite0",
                  "--weights", "pretrained", "--epochs", "1", "-j", "0",
                  "--output-dir", str(tmp_path / "run"), cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 1
    (line,) = failure(proc)
    assert line.startswith(
        "imgclf train: train failed: timm/efficientnet_lite0.ra_in1k is not in the Hugging Face "
        f"cache ({tmp_path / 'hf' / 'hub'}) and http://127.0.0.1:{port} cannot be reached "
        "(Connection refused). Without a network: "
    )
    assert "epoch 1/1" not in proc.stdout


def test_a_missing_train_extra_names_the_install(tmp_path: Path) -> None:
    """A serving install (no torch): the hint fits a checkout and an installed package."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ModuleNotFoundError(name='torch')\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{REPO_ROOT}"}
    proc = imgclf("export", "x.pth", "--name", "x", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert failure(proc) == [
        "imgclf export: this command needs the train extra (PyTorch); torch is not installed",
        "  hint: in a checkout: `make install-all` (or .venv/bin/pip install -e '.[train]'); "
        "an installed imgclf: pip install 'imgclf[train]'",
    ]
