"""Two gloo processes train on tar shards with loader workers: shards of unequal size split
over ranks and workers still give both ranks the same steps (a DDP run would hang otherwise),
and the run resumes from its checkpoint."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from imgclf.training.shard_writer import write_shards  # noqa: E402
from tests.unit.training.trees import write_digits_tree  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_with_workers_train_on_uneven_shards(tmp_path: Path) -> None:
    tree = write_digits_tree(tmp_path / "tree", (0, 1, 2), per_class=10, split="train")
    write_shards(tree, tmp_path / "shards", shard_size=5)  # train: 24 = 5+5+5+5+4, val: 6
    run = tmp_path / "run"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "imgclf.training.train", "--data-path", str(tmp_path / "shards"),
            "--model", "digits_cnn_w4", "--input-size", "16", "-b", "4", "-j", "2",
            "--no-progress", "--auto-resume", "--output-dir", str(run)]  # fmt: skip
    for epochs in (2, 3):  # the second run resumes after epoch 2
        out = subprocess.run(
            [*base, "--epochs", str(epochs)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.count(f"epoch {epochs}/{epochs}: train loss") == 1, out.stdout
    assert "resumed from" in out.stdout and "after epoch 2" in out.stdout
    with (run / "history.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    ckpt = torch.load(run / "checkpoint.pth", weights_only=True)
    assert ckpt["class_names"] == ["0", "1", "2"] and ckpt["data"]["train_images"] == 24
