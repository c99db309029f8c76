"""Datasets for training: the built-in digits, or an image-folder tree.

``--data-path DIR`` with ``train/`` and ``val/`` subfolders uses those; a single tree is split
(stratified, seeded). Class names are kept in order and go into the checkpoint and the ONNX.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from service.imaging import decode_image
from training.digits import digits_split, load_digits_images
from training.folders import class_counts, find_classes, list_images, stratified_split

DATASETS = ("digits", "folder")

Sample = Image.Image | Path
"""An image in memory, or a file decoded the way the server decodes uploads."""


def load_image(sample: Sample) -> Image.Image:
    """An RGB PIL image from a sample (decoded with service.imaging for files)."""
    if isinstance(sample, Image.Image):
        return sample
    return decode_image(Path(sample).read_bytes())


class ImageDataset(Dataset):
    """(tensor, label) pairs from images in memory or on disk, through a preset."""

    def __init__(
        self,
        samples: Sequence[Sample],
        labels: np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        if len(samples) != len(labels):
            raise ValueError(f"{len(samples)} samples but {len(labels)} labels")
        self.samples = list(samples)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_image(self.samples[index])), int(self.labels[index])


@dataclass
class SplitData:
    """The raw (untransformed) train and val samples of a dataset, with its class names."""

    class_names: list[str]
    train_samples: list[Sample]
    train_labels: np.ndarray
    val_samples: list[Sample]
    val_labels: np.ndarray


def load_split(
    dataset: str,
    data_path: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> SplitData:
    """The train/val samples of `dataset` ("digits" or "folder").

    `val_fraction` and `seed` define the split of the digits and of a single folder tree; they
    are the split's own seed, not the training seed, so that the held-out set stays put.
    """
    if dataset == "digits":
        images, labels, class_names = load_digits_images()
        train_idx, val_idx = digits_split(labels, val_fraction=val_fraction, seed=seed)
        return SplitData(
            class_names,
            [images[i] for i in train_idx],
            labels[train_idx],
            [images[i] for i in val_idx],
            labels[val_idx],
        )
    if dataset != "folder":
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if data_path is None:
        raise ValueError("--dataset folder needs --data-path")
    root = Path(data_path)
    if (root / "train").is_dir() and (root / "val").is_dir():
        class_names = find_classes(root / "train")
        train_paths, train_labels = list_images(root / "train", class_names)
        val_paths, val_labels = list_images(root / "val", class_names)
        return SplitData(class_names, list(train_paths), train_labels, list(val_paths), val_labels)
    class_names = find_classes(root)
    paths, labels = list_images(root, class_names)
    train_idx, val_idx = stratified_split(labels, val_fraction=val_fraction, seed=seed)
    return SplitData(
        class_names,
        [paths[i] for i in train_idx],
        labels[train_idx],
        [paths[i] for i in val_idx],
        labels[val_idx],
    )


def format_class_counts(split: SplitData) -> str:
    """A table of per-class sample counts in train and val, for the log."""
    train = class_counts(split.train_labels, split.class_names)
    val = class_counts(split.val_labels, split.class_names)
    width = max(5, *(len(n) for n in split.class_names))
    lines = [f"{'class':<{width}}  {'train':>6}  {'val':>6}"]
    lines += [f"{n:<{width}}  {train[n]:>6}  {val[n]:>6}" for n in split.class_names]
    lines.append(f"{'total':<{width}}  {len(split.train_labels):>6}  {len(split.val_labels):>6}")
    return "\n".join(lines)
