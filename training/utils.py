"""Run bookkeeping: seeding, history.csv, plots, JSON, checkpoint-safe values."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; returns a seeded generator for DataLoader shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def plain(value: Any) -> Any:
    """`value` with Paths, tuples and numpy scalars made into JSON/weights_only-safe primitives."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(plain(data), indent=2, sort_keys=True) + "\n")


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in HISTORY_FIELDS})


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def plot_history(rows: list[dict[str, float]], out_dir: Path) -> None:
    """loss.png and accuracy.png: train and val curves per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    for metric, ylabel, name in (("loss", "loss", "loss.png"), ("acc", "accuracy", "accuracy.png")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(epochs, [r[f"train_{metric}"] for r in rows], marker="o", label="train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in rows], marker="o", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
