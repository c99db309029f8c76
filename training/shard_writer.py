"""``imgclf shards DIR OUT``: write an image folder as WebDataset-style tar shards.

    imgclf shards data/photos data/photos-shards --shard-size 1000

The folder is split as ``imgclf train`` splits it (``train/`` and ``val/`` subfolders, or one
tree split by ``--val-fraction``/``--split-seed``), unreadable files are left out (and listed
in the manifest), and each split is written in a seeded random order, so every shard holds a
mix of classes. Image bytes are stored unchanged: training decodes them as it decodes the
files. See imgclf.training.data.shards for the format and how training reads it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from imgclf.training.data.datasets import load_split
from imgclf.training.data.shards import FORMAT, MANIFEST, SPLITS, VERSION, encode_sample, write_tar

DEFAULT_SHARD_SIZE = 1000


def write_shards(
    source: Path,
    out: Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    seed: int = 0,
) -> dict:
    """Write the shards and the manifest of the image folder `source` into `out`; returns the
    manifest."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists() or any(out.glob("*.tar")):
        raise ValueError(f"{out} already holds shards; write into an empty folder")
    split = load_split("folder", source, val_fraction, split_seed, check_images=True)
    classes = split.class_names
    root = Path(source).resolve()
    manifest: dict = {
        "format": FORMAT,
        "version": VERSION,
        "source": str(source),
        "class_names": classes,
        "shard_size": shard_size,
        "splits": {},
        "skipped": [[p, r] for p, r in split.skipped],
    }
    rng = random.Random(seed)
    for name in SPLITS:
        paths = split.train_samples if name == "train" else split.val_samples
        labels = split.train_labels if name == "train" else split.val_labels
        order = list(range(len(paths)))
        rng.shuffle(order)
        shards = []
        for n, start in enumerate(range(0, len(order), shard_size)):
            chunk = order[start : start + shard_size]
            members = []
            for i in chunk:
                path = Path(paths[i])
                meta = {"path": str(path.resolve().relative_to(root)), "class": classes[labels[i]]}
                ext = path.suffix.lower().lstrip(".")
                members += encode_sample(f"{i:09d}", path.read_bytes(), ext, int(labels[i]), meta)
            shard_name = f"{name}-{n:06d}.tar"
            write_tar(out / shard_name, members)
            counts = np.bincount(labels[chunk], minlength=len(classes))
            shards.append(
                {"name": shard_name, "count": len(chunk), "class_counts": counts.tolist()}
            )
        manifest["splits"][name] = {
            "count": len(order),
            "class_counts": dict(
                zip(classes, np.bincount(labels, minlength=len(classes)).tolist(), strict=True)
            ),
            "shards": shards,
        }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="imgclf shards", description="Write an image folder as tar shards for training."
    )
    parser.add_argument("source", type=Path, help="image folder (train/ and val/, or one tree)")
    parser.add_argument("out", type=Path, help="folder for the shards and manifest.json")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of a tree")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order within shards")
    args = parser.parse_args(argv)
    try:
        manifest = write_shards(
            args.source, args.out, args.shard_size, args.val_fraction, args.split_seed, args.seed
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"shards failed: {exc}")
        return 1
    for name in SPLITS:
        part = manifest["splits"][name]
        n = len(part["shards"])
        print(f"{name}: {part['count']} images in {n} shard{'s' if n != 1 else ''}")
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} unreadable file(s), listed in {MANIFEST}")
    print(f"{len(manifest['class_names'])} classes; manifest {args.out / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
