"""What a run leaves behind each epoch: history.csv, loss.png, accuracy.png, and TensorBoard
scalars when TensorBoard is installed (``--tensorboard``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s")
EMA_FIELDS = ("ema_val_loss", "ema_val_acc")


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    fields = HISTORY_FIELDS + (EMA_FIELDS if rows and EMA_FIELDS[0] in rows[0] else ())
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in fields})


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def history_figure(rows: list[dict[str, float]], metric: str, ylabel: str, title: str = "") -> Any:
    """The figure of one metric ("loss" or "acc"): train and val (and EMA val) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [r[f"train_{metric}"] for r in rows], marker="o", label="train")
    ax.plot(epochs, [r[f"val_{metric}"] for r in rows], marker="o", label="val")
    if rows and f"ema_val_{metric}" in rows[0]:
        ax.plot(epochs, [r[f"ema_val_{metric}"] for r in rows], marker=".", label="val (EMA)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_history(rows: list[dict[str, float]], out_dir: Path, title: str = "") -> None:
    """loss.png and accuracy.png: train and val (and EMA val) curves per epoch."""
    import matplotlib.pyplot as plt

    for metric, ylabel, name in (("loss", "loss", "loss.png"), ("acc", "accuracy", "accuracy.png")):
        fig = history_figure(rows, metric, ylabel, title)
        fig.savefig(out_dir / name)
        plt.close(fig)


class TensorBoard:
    """Scalars per epoch through torch.utils.tensorboard; inert (with one notice) when the
    tensorboard package is not installed or logging was not asked for."""

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("TensorBoard is not installed (pip install tensorboard); not logging to it")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))
        print(f"TensorBoard logs in {log_dir}")

    def log(self, row: dict[str, float]) -> None:
        if self.writer is None:
            return
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                group = (
                    "loss" if key.endswith("loss") else "accuracy" if key.endswith("acc") else ""
                )
                self.writer.add_scalar(f"{group}/{key}" if group else key, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
