"""Training data loader throughput: the same images as tar shards and as an image folder.

    python -m benchmarks.shard_loader                    # 600 JPEGs, 2 workers, 3 rounds
    python -m benchmarks.shard_loader --images 2000 --workers 4 --rounds 5

Writes `--images` JPEG crops of three real photos (scikit-image's) into a temporary image
folder (one tree, split like ``imgclf train``), writes it as shards (``imgclf shards``), then
times one training epoch of each loader in turn, folder then shards, `--rounds` times (ABAB,
after one warm-up epoch of each): the same training transforms (ImageNet augmentation at
`--input-size`), the same batch size and workers. Prints images/s of each epoch, the median
and spread (min-max) of each, and the per-round ratio shards/folder.

Both read from the page cache after the warm-up, so this measures the loader itself (tar
streaming and grouping against one open() per file, decoding, transforms, worker hand-off),
not the storage: on a network volume or an object store, where each small file costs a round
trip, sequential shard reads are where the difference is.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from imgclf.imaging import Preprocessing
from imgclf.training.data.datasets import ImageDataset, load_split
from imgclf.training.data.presets import TrainPreset
from imgclf.training.data.shards import ShardDataset, open_shards
from imgclf.training.shard_writer import write_shards
from imgclf.training.utils import seed_worker

PHOTOS = ("chelsea", "coffee", "rocket")


def write_folder(root: Path, images: int, seed: int = 0) -> Path:
    """root/<photo>/<n>.jpg: random square crops (a third to two thirds of the shorter side)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    for c, name in enumerate(PHOTOS):
        img = Image.fromarray(getattr(data, name)())
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(c, images, len(PHOTOS)):
            side = int(min(img.size) * rng.uniform(0.33, 0.67))
            left = int(rng.integers(0, img.width - side + 1))
            top = int(rng.integers(0, img.height - side + 1))
            crop = img.crop((left, top, left + side, top + side))
            crop.save(root / name / f"{k:06d}.jpg", quality=90)
    return root


def epoch_rate(loader: DataLoader) -> tuple[float, int]:
    """(images/s, images) of one pass over `loader`."""
    started = time.perf_counter()
    n = sum(int(targets.shape[0]) for _, targets in loader)
    return n / (time.perf_counter() - started), n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = Preprocessing(
        input_size=(args.input_size, args.input_size),
        resize_size=args.input_size * 256 // 224,
        interpolation="bilinear",
    )
    transform = TrainPreset(spec, "imagenet")
    with tempfile.TemporaryDirectory(prefix="imgclf-shard-bench-") as tmp:
        folder = write_folder(Path(tmp) / "folder", args.images)
        write_shards(folder, Path(tmp) / "shards", shard_size=args.shard_size)
        split = load_split("folder", folder)
        source = open_shards(Path(tmp) / "shards")
        kw = {"batch_size": args.batch_size, "num_workers": args.workers}
        kw["worker_init_fn"] = seed_worker if args.workers else None
        folder_loader = DataLoader(
            ImageDataset(split.train_samples, split.train_labels, transform), shuffle=True, **kw
        )
        shard_ds = ShardDataset(source.train, transform, seed=0, workers=args.workers)
        shard_loader = DataLoader(shard_ds, **kw)
        print(
            f"{len(split.train_samples)} training images ({args.images} JPEGs in all), "
            f"{len(source.train)} shards of {args.shard_size}; {args.workers} workers, "
            f"batch {args.batch_size}, input {args.input_size}, ImageNet augmentation"
        )
        epoch_rate(folder_loader), epoch_rate(shard_loader)  # warm-up: page cache, imports
        rates: dict[str, list[float]] = {"folder": [], "shards": []}
        for r in range(args.rounds):
            shard_ds.set_epoch(r + 1)
            for name, loader in (("folder", folder_loader), ("shards", shard_loader)):
                rate, n = epoch_rate(loader)
                rates[name].append(rate)
                print(f"round {r + 1} {name:<6}: {rate:7.1f} images/s ({n} images)")
        for name, values in rates.items():
            print(
                f"{name:<6}: median {statistics.median(values):7.1f} images/s, "
                f"spread {min(values):.1f}-{max(values):.1f}"
            )
        ratios = [s / f for f, s in zip(rates["folder"], rates["shards"], strict=True)]
        print(
            f"shards/folder per round: {', '.join(f'{x:.2f}' for x in ratios)} "
            f"(median {statistics.median(ratios):.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
