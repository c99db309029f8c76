"""The data of a training run: the labelled split (unreadable files listed, not fatal) and the
train and validation loaders over it, from image files or tar shards, on one process or
sharded across a torchrun job (imgclf.training.loop.distributed)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from imgclf.training.config import preprocessing_from_args
from imgclf.training.data.datasets import (
    ImageDataset,
    ShardSampler,
    SplitData,
    format_class_counts,
    load_split,
)
from imgclf.training.data.presets import EvalPreset, TrainPreset
from imgclf.training.data.shards import ShardDataset, shard_loaders
from imgclf.training.loop.distributed import DistInfo
from imgclf.training.utils import seed_worker
from imgclf.usererror import UserError


def load_data(
    args: argparse.Namespace, out: Path, info: DistInfo, log: Callable[..., None]
) -> SplitData:
    """The labelled split; unreadable files are listed (skipped_images.txt), not fatal."""
    split = load_split(
        args.dataset, args.data_path, args.val_fraction, args.split_seed, not args.no_image_check
    )
    classes = split.class_names
    if len(classes) < 2:
        where = args.data_path if args.dataset == "folder" else args.dataset
        raise UserError(
            f"{where} has {len(classes)} class ({', '.join(classes)}): a classifier needs at "
            "least 2",
            "put one subfolder of images per class under it (DIR/<class>/*.jpg)",
        )
    log(f"dataset {args.dataset}: {len(classes)} classes\n{format_class_counts(split)}")
    if split.skipped:
        log(f"skipped {len(split.skipped)} unreadable image file(s), listed in skipped_images.txt")
        for path, reason in split.skipped[:10]:
            log(f"  {path}: {reason}")
        if info.is_main:
            lines = [f"{p}\t{r}" for p, r in split.skipped]
            (out / "skipped_images.txt").write_text("\n".join(lines) + "\n")
    return split


def build_loaders(
    args: argparse.Namespace, split: SplitData, info: DistInfo, generator: torch.Generator
) -> tuple[DataLoader, DataLoader, DistributedSampler | ShardDataset | None]:
    spec = preprocessing_from_args(args)
    if split.shards is not None:
        return shard_loaders(
            split.shards,
            TrainPreset(spec, args.augmentation),
            EvalPreset(spec),
            batch_size=args.batch_size,
            workers=args.workers,
            rank=info.rank,
            world_size=info.world_size,
            seed=args.seed,
            pin_memory=args.device.startswith("cuda"),
            worker_init_fn=seed_worker,
        )
    train_ds = ImageDataset(
        split.train_samples, split.train_labels, TrainPreset(spec, args.augmentation)
    )
    val_ds = ImageDataset(split.val_samples, split.val_labels, EvalPreset(spec))
    kw: dict[str, Any] = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "persistent_workers": args.workers > 0,
        "pin_memory": args.device.startswith("cuda"),
        "worker_init_fn": seed_worker if args.workers > 0 else None,
    }
    sampler = None
    if info.enabled:
        sampler = DistributedSampler(train_ds, info.world_size, info.rank, seed=args.seed)
        train_loader = DataLoader(train_ds, sampler=sampler, **kw)
    else:
        train_loader = DataLoader(train_ds, shuffle=True, generator=generator, **kw)
    val_sampler = ShardSampler(len(val_ds), info.rank, info.world_size)
    return train_loader, DataLoader(val_ds, sampler=val_sampler, **kw), sampler
