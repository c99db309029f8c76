"""``torchrun --nproc_per_node 2`` trains on CPU with gloo like one process does, and only
rank 0 prints and writes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from imgclf.training import train  # noqa: E402
from tests.unit.training.trees import one_torch_thread  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
COMMON = [
    "--dataset", "digits", "--model", "digits_cnn_w8", "--epochs", str(EPOCHS),
    "--lr", "0.05", "--wd", "5e-4", "--seed", "0", "-j", "0", "--no-progress",
]  # fmt: skip
RUN_FILES = {
    "accuracy.png", "args.json", "args.yaml", "best.pth", "checkpoint.pth", "history.csv",
    "loss.png",
}  # fmt: skip

one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_train_like_one(tmp_path: Path) -> None:
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    # The same global batch (2 x 16 = 32) and schedule as the single process.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "imgclf.training.train", *COMMON, "-b", "16",
           "--output-dir", str(ddp_dir)]  # fmt: skip
    out = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert train.main([*COMMON, "-b", "32", "--output-dir", str(single_dir)]) == 0

    # Rank 0 alone printed and wrote: each epoch logged once, one set of run files.
    assert out.stdout.count("distributed: 2 processes, global batch 32") == 1
    for epoch in range(1, EPOCHS + 1):
        assert out.stdout.count(f"epoch {epoch}/{EPOCHS}: train loss") == 1, out.stdout
    assert {p.name for p in ddp_dir.iterdir()} == RUN_FILES
    rows = history(ddp_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    ckpt = torch.load(ddp_dir / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == EPOCHS and not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["args"]["batch_size"] == 16

    # The same kind of result: both learn the digits, to within a few points of each other.
    ddp_acc = float(rows[-1]["val_acc"])
    single_acc = float(history(single_dir)[-1]["val_acc"])
    print(f"val accuracy after {EPOCHS} epochs: torchrun x2 {ddp_acc:.4f}, one {single_acc:.4f}")
    assert ddp_acc >= 0.8 and single_acc >= 0.8
    assert abs(ddp_acc - single_acc) <= 0.08
