"""WebDataset-style tar shards: read in the DataLoader workers, each shard by one rank and one
worker, for data sets too large to list and open as millions of small files.

``imgclf shards DIR OUT`` (imgclf.training.shard_writer) writes::

    OUT/train-000000.tar  OUT/train-000001.tar ...  OUT/val-000000.tar ...  OUT/manifest.json

A shard is a plain tar file of samples, each a group of members sharing a key (the member name
up to the first dot of its base name, as WebDataset has it): ``KEY.jpg`` (or ``.png``...: the
image file's bytes, unchanged), ``KEY.cls`` (the class index in ASCII) and ``KEY.json`` (where
the sample came from). ``manifest.json`` names the classes and lists every shard with its
sample count, which the loader needs to give every rank the same number of steps.

``--data-path`` takes ``OUT`` (its manifest's train and val shards), or a brace pattern of
training shards such as ``OUT/train-{000000..000009}.tar`` (val shards and class names from
the manifest next to them). Reading is sequential (``tarfile`` in stream mode), so a shard may
live on a shared volume or an object store mounted as files.
"""

from __future__ import annotations

import io
import json
import random
import re
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imgclf.errors import InvalidInput
from imgclf.imaging import decode_image
from imgclf.training.data.folders import IMAGE_EXTENSIONS

MANIFEST = "manifest.json"
FORMAT = "imgclf-shards"
VERSION = 1
SPLITS = ("train", "val")
SHUFFLE_BUFFER = 1000
"""Samples (encoded bytes) a worker holds to shuffle within and across its shards."""
IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}
_BRACE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Shard:
    path: Path
    count: int
    class_counts: tuple[int, ...]
    """Samples per class index."""


@dataclass
class ShardSource:
    """The shards of a data set, from its manifest: class names, train and val shards."""

    root: Path
    class_names: list[str]
    train: list[Shard]
    val: list[Shard]

    def labels(self, split: str) -> np.ndarray:
        """Labels with the split's per-class counts, in class order (not sample order): for
        the class table and the sizes, without reading the shards."""
        shards = self.train if split == "train" else self.val
        counts = np.sum([s.class_counts for s in shards], axis=0, dtype=np.int64)
        return np.repeat(np.arange(len(self.class_names), dtype=np.int64), counts)


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar; ``{x,y}`` lists too (the
    WebDataset/braceexpand notation; zero padding kept from the range's first bound)."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end() :], match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        if int(last) < int(first):
            raise ValueError(f"empty range {{{body}}} in {pattern}")
        width = len(first) if first.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise ValueError(f"{{{body}}} in {pattern} is neither a range a..b nor a list x,y")
    return [head + item + rest for item in items for rest in expand_braces(tail)]


def is_shard_source(data_path: str | Path) -> bool:
    """Whether ``--data-path`` names shards: a brace pattern or a .tar file, or a folder that
    holds a shard manifest or .tar files."""
    text = str(data_path)
    if text.endswith(".tar"):
        return True
    path = Path(text)
    return path.is_dir() and ((path / MANIFEST).is_file() or any(path.glob("*.tar")))


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} has no {MANIFEST}: shards need one for the class names and sample counts "
            "(write shards with `imgclf shards DIR OUT`)"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path} is not an {FORMAT} version {VERSION} manifest")
    return manifest


def open_shards(data_path: str | Path) -> ShardSource:
    """The shards ``--data-path`` names (see the module docstring), checked against the
    manifest: every shard must exist and be listed there."""
    text = str(data_path)
    pattern = text if text.endswith(".tar") else None
    root = Path(text).parent if pattern else Path(text)
    manifest = read_manifest(root)
    listed = {
        split: {s["name"]: s for s in manifest["splits"][split]["shards"]} for split in SPLITS
    }

    def shards(split: str, names: list[str]) -> list[Shard]:
        out = []
        for name in names:
            if name not in listed[split]:
                raise ValueError(f"{root / name} is not a {split} shard of {root / MANIFEST}")
            if not (root / name).is_file():
                raise FileNotFoundError(f"shard {root / name} is missing")
            entry = listed[split][name]
            out.append(Shard(root / name, int(entry["count"]), tuple(entry["class_counts"])))
        return out

    if pattern:
        names = []
        for path in expand_braces(pattern):
            if Path(path).parent != root:
                raise ValueError(f"{pattern}: the shards must be in one folder")
            names.append(Path(path).name)
        train = shards("train", names)
    else:
        train = shards("train", list(listed["train"]))
    val = shards("val", list(listed["val"]))
    if not train or not val:
        raise ValueError(f"{root}: no train or no val shards")
    return ShardSource(root, list(manifest["class_names"]), train, val)


@dataclass(frozen=True)
class RawSample:
    key: str
    data: bytes
    """The encoded image."""
    label: int
    source: str
    """shard:key, for messages."""


def read_shard(path: Path) -> Iterator[RawSample]:
    """The samples of one shard in order, read as a stream (one pass, no seeking)."""
    with tarfile.open(path, "r|") as tar:
        key: str | None = None
        parts: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key:
                if key is not None:
                    yield _sample(path, key, parts)
                key, parts = member_key, {}
            handle = tar.extractfile(member)
            parts[ext.lower()] = handle.read() if handle is not None else b""
        if key is not None:
            yield _sample(path, key, parts)


def _sample(path: Path, key: str, parts: dict[str, bytes]) -> RawSample:
    images = [ext for ext in parts if ext in IMAGE_EXTS]
    if len(images) != 1 or "cls" not in parts:
        raise ValueError(f"{path}: sample {key!r} needs one image and a .cls, has {sorted(parts)}")
    try:
        label = int(parts["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: sample {key!r} has a bad .cls {parts['cls'][:20]!r}") from None
    return RawSample(key, parts[images[0]], label, f"{path.name}:{key}")


def assign(num_shards: int, rank: int, world_size: int, worker: int, workers: int) -> list[int]:
    """The shard positions one (rank, worker) reads: rank r takes r, r + world, ...; its worker
    w takes every `workers`-th of those. Over all ranks and workers: each position once."""
    return list(range(num_shards))[rank::world_size][worker::workers]


class ShardDataset(IterableDataset):
    """(tensor, label) from shards, decoded in the DataLoader workers.

    Training (``train=True``): the shard order is shuffled per epoch (``set_epoch``) with
    `seed`, then split by global rank and by worker; each worker streams its shards through a
    shuffle buffer. Every rank yields the same number of samples from each of its workers (the
    smallest any rank's worker holds), so every rank takes the same number of steps, which DDP
    needs: with equal shards, as many as ranks x workers or a multiple, nothing is left out; else
    the surplus (at most about a shard per rank and worker) is left out of that epoch, and
    other samples the next. Validation (``train=False``): shards in order, every sample once.

    A sample that fails to decode is reported and replaced by the next good one (its tensor
    given twice), so the counts and steps stay as planned.
    """

    def __init__(
        self,
        shards: list[Shard],
        transform: Callable[[Image.Image], torch.Tensor],
        rank: int = 0,
        world_size: int = 1,
        *,
        train: bool = True,
        seed: int = 0,
        workers: int = 0,
        buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        if train and len(shards) < world_size:
            raise ValueError(
                f"{len(shards)} shards for {world_size} processes: every process needs one "
                "(write smaller shards: imgclf shards --shard-size)"
            )
        self.shards = list(shards)
        self.transform = transform
        self.rank, self.world_size = rank, world_size
        self.train, self.seed, self.buffer = train, seed, buffer
        self.workers = max(1, workers)
        """DataLoader workers (num_workers; 0 counts as the one main process)."""
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (the workers are started afresh each epoch and copy it)."""
        self.epoch = epoch

    def _order(self) -> list[Shard]:
        order = list(self.shards)
        if self.train:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def quotas(self) -> list[int]:
        """Samples each worker of this rank yields this epoch (the same on every rank)."""
        order, workers = self._order(), self.workers
        held = [
            [
                sum(order[i].count for i in assign(len(order), r, self.world_size, w, workers))
                for w in range(workers)
            ]
            for r in range(self.world_size)
        ]
        if not self.train:
            return held[self.rank]
        return [min(ranks[w] for ranks in held) for w in range(workers)]

    def __len__(self) -> int:
        return sum(self.quotas())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"made for {self.workers} loader workers, run by {workers}")
        return self.stream(worker)

    def raw(self, worker: int) -> Iterator[RawSample]:
        """The encoded samples worker `worker` of this rank yields this epoch, in order."""
        order, workers = self._order(), self.workers
        quota = self.quotas()[worker]
        mine = [order[i] for i in assign(len(order), self.rank, self.world_size, worker, workers)]
        samples = (s for shard in mine for s in read_shard(shard.path))
        if self.train:
            salt = ((self.seed * 1_000_003 + self.epoch) * 4099 + self.rank) * 257 + worker
            samples = _shuffled(samples, self.buffer, random.Random(salt))
        for n, sample in enumerate(samples):
            if n >= quota:
                return
            yield sample

    def stream(self, worker: int) -> Iterator[tuple[torch.Tensor, int]]:
        """Decoded, transformed samples of worker `worker` of this rank (see the class)."""
        pending = 0
        last: tuple[torch.Tensor, int] | None = None
        for sample in self.raw(worker):
            try:
                image = decode_image(sample.data)
            except (InvalidInput, OSError, ValueError) as exc:
                print(
                    f"warning: skipping undecodable sample {sample.source}: {exc}", file=sys.stderr
                )
                pending += 1
                continue
            last = (self.transform(image), sample.label)
            for _ in range(pending + 1):
                yield last
            pending = 0
        if pending and last is None:
            raise RuntimeError(f"no sample of worker {worker} on rank {self.rank} decoded")
        for _ in range(pending):
            yield last  # type: ignore[misc]


def _shuffled(samples: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    """WebDataset's shuffle buffer: fill `size` samples, then emit a random one per sample."""
    buffer: list[RawSample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def shard_loaders(
    source: ShardSource,
    train_transform: Callable[[Image.Image], torch.Tensor],
    val_transform: Callable[[Image.Image], torch.Tensor],
    *,
    batch_size: int,
    workers: int,
    rank: int,
    world_size: int,
    seed: int,
    pin_memory: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
) -> tuple[DataLoader, DataLoader, ShardDataset]:
    """(train loader, val loader, train dataset) over `source`'s shards for this rank. The
    workers are not persistent: each epoch starts them with the dataset's new epoch."""
    train_ds = ShardDataset(
        source.train, train_transform, rank, world_size, train=True, seed=seed, workers=workers
    )
    val_ds = ShardDataset(source.val, val_transform, rank, world_size, train=False, workers=workers)
    kw = {
        "batch_size": batch_size,
        "num_workers": workers,
        "pin_memory": pin_memory,
        "worker_init_fn": worker_init_fn if workers > 0 else None,
    }
    return DataLoader(train_ds, **kw), DataLoader(val_ds, **kw), train_ds


def encode_sample(
    key: str, data: bytes, ext: str, label: int, meta: dict
) -> list[tuple[str, bytes]]:
    """The tar members of one sample: (name, bytes)."""
    return [
        (f"{key}.{ext}", data),
        (f"{key}.cls", str(label).encode("ascii")),
        (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
    ]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A reproducible tar (fixed times and owners), written to a temporary name first."""
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
