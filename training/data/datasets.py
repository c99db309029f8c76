"""Datasets for training: a built-in one (imgclf.training.data.builtin) or an image-folder tree.

``--data-path DIR`` with ``train/`` and ``val/`` subfolders uses those; a single tree is split
(stratified, seeded); tar shards (imgclf.training.data.shards) are read by the loader workers
instead.
Class names are kept in order and go into the checkpoint and the ONNX.
Unreadable files are reported and left out before training (``skipped``); a file that still
fails to decode during training is reported once and replaced by the next sample, so batches
keep their size (which distributed training needs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from imgclf.errors import InvalidInput
from imgclf.imaging import decode_image
from imgclf.training.data.builtin import BUILTIN_DATASETS, builtin_dataset
from imgclf.training.data.folders import (
    class_counts,
    find_classes,
    find_corrupt,
    list_images,
    stratified_split,
)
from imgclf.training.data.shards import ShardSource, is_shard_source, open_shards

DATASETS = (*BUILTIN_DATASETS, "folder")

Sample = Image.Image | Path
"""An image in memory, or a file decoded the way the server decodes uploads."""


def load_image(sample: Sample) -> Image.Image:
    """An RGB PIL image from a sample (decoded with imgclf.imaging for files)."""
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
        if not len(samples):
            raise ValueError("no samples")
        self.samples = list(samples)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            if i in self.failed:
                continue
            try:
                return self.transform(load_image(self.samples[i])), int(self.labels[i])
            except (InvalidInput, OSError, ValueError) as exc:
                self.failed.add(i)
                print(
                    f"warning: skipping unreadable image {self.samples[i]}: {exc}", file=sys.stderr
                )
        raise RuntimeError("every sample of the dataset failed to load")


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... in order: each sample evaluated once across processes
    (unlike DistributedSampler, no padding duplicates, so all-reduced metrics are exact)."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class SplitData:
    """The raw (untransformed) train and val samples of a dataset, with its class names."""

    class_names: list[str]
    train_samples: list[Sample]
    train_labels: np.ndarray
    val_samples: list[Sample]
    val_labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) of the files left out because they are not readable images."""
    shards: ShardSource | None = None
    """Tar shards, read by the loaders; the sample lists are then empty and the label arrays
    hold the manifest's class counts in class order."""


def _without_corrupt(
    paths: list[Path], labels: np.ndarray, skipped: list[tuple[str, str]]
) -> tuple[list[Path], np.ndarray]:
    corrupt = find_corrupt(paths)
    skipped += [(str(paths[i]), reason) for i, reason in sorted(corrupt.items())]
    keep = [i for i in range(len(paths)) if i not in corrupt]
    return [paths[i] for i in keep], labels[keep]


def load_split(
    dataset: str,
    data_path: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    check_images: bool = True,
) -> SplitData:
    """The train/val samples of `dataset` (a built-in name or "folder").

    `val_fraction` and `seed` define the split of a built-in dataset and of a single folder
    tree; they are the split's own seed, not the training seed, so the held-out set stays put.
    The split is made over every file found, before unreadable files are left out, so it is
    the same split that ``imgclf evaluate`` makes.
    """
    if dataset in BUILTIN_DATASETS:
        images, labels, class_names = builtin_dataset(dataset).load()
        train_idx, val_idx = stratified_split(labels, val_fraction=val_fraction, seed=seed)
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
    if is_shard_source(data_path):
        source = open_shards(data_path)
        return SplitData(
            source.class_names, [], source.labels("train"), [], source.labels("val"), [], source
        )
    root = Path(data_path)
    if (root / "train").is_dir() and (root / "val").is_dir():
        class_names = find_classes(root / "train")
        train_paths, train_labels = list_images(root / "train", class_names)
        val_paths, val_labels = list_images(root / "val", class_names)
    else:
        class_names = find_classes(root)
        paths, labels = list_images(root, class_names)
        train_idx, val_idx = stratified_split(labels, val_fraction=val_fraction, seed=seed)
        train_paths, train_labels = [paths[i] for i in train_idx], labels[train_idx]
        val_paths, val_labels = [paths[i] for i in val_idx], labels[val_idx]
    skipped: list[tuple[str, str]] = []
    if check_images:
        train_paths, train_labels = _without_corrupt(train_paths, train_labels, skipped)
        val_paths, val_labels = _without_corrupt(val_paths, val_labels, skipped)
    return SplitData(
        class_names, list(train_paths), train_labels, list(val_paths), val_labels, skipped
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
