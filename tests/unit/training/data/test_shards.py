"""Tar shards: written from a folder they hold the same labelled images; split by rank and by
worker they cover every sample once; training reads them."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from imgclf import cli  # noqa: E402
from imgclf.imaging import Preprocessing  # noqa: E402
from imgclf.training import train  # noqa: E402
from imgclf.training.data.datasets import load_image, load_split  # noqa: E402
from imgclf.training.data.presets import EvalPreset  # noqa: E402
from imgclf.training.data.shards import (  # noqa: E402
    Shard,
    ShardDataset,
    assign,
    encode_sample,
    expand_braces,
    is_shard_source,
    open_shards,
    read_shard,
    write_tar,
)
from imgclf.training.shard_writer import write_shards  # noqa: E402
from tests.unit.training.trees import write_digits_tree  # noqa: E402

SPEC = Preprocessing(input_size=(16, 16), resize_size=16, interpolation="bilinear")


@pytest.fixture(scope="module")
def tree_and_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shards")
    tree = write_digits_tree(root / "tree", (0, 1, 2), per_class=12, split="train")
    write_shards(tree, root / "shards", shard_size=5, val_fraction=0.25)
    return tree, root / "shards"


def digest(image: torch.Tensor, label: int) -> tuple[int, str]:
    return label, hashlib.sha256(image.numpy().tobytes()).hexdigest()


def keys(ds: ShardDataset, worker: int) -> list[str]:
    return [f"{s.source}" for s in ds.raw(worker)]


def test_expand_braces() -> None:
    assert expand_braces("d/s-{000008..000011}.tar") == [
        "d/s-000008.tar", "d/s-000009.tar", "d/s-000010.tar", "d/s-000011.tar",
    ]  # fmt: skip
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    with pytest.raises(ValueError, match="neither a range"):
        expand_braces("s-{x}.tar")


def test_shards_hold_the_folders_labelled_images(tree_and_shards: tuple[Path, Path]) -> None:
    tree, shards = tree_and_shards
    assert is_shard_source(shards) and not is_shard_source(tree)
    folder = load_split("folder", tree, val_fraction=0.25)
    sharded = load_split("folder", shards)
    assert sharded.shards is not None and sharded.class_names == folder.class_names == [
        "0",
        "1",
        "2",
    ]
    preset = EvalPreset(SPEC)
    for split, samples, labels in (
        (sharded.shards.train, folder.train_samples, folder.train_labels),
        (sharded.shards.val, folder.val_samples, folder.val_labels),
    ):
        from_folder = Counter(
            digest(preset(load_image(s)), int(y)) for s, y in zip(samples, labels, strict=True)
        )
        ds = ShardDataset(split, preset, train=False)
        from_shards = Counter(digest(x, y) for x, y in ds.stream(0))
        assert from_shards == from_folder
    assert sorted(sharded.train_labels) == sorted(folder.train_labels)
    assert sorted(sharded.val_labels) == sorted(folder.val_labels)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["class_names"] == ["0", "1", "2"]
    assert manifest["splits"]["train"]["class_counts"] == {"0": 9, "1": 9, "2": 9}
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [5, 5, 5, 5, 5, 2]


def test_a_brace_pattern_selects_training_shards(tree_and_shards: tuple[Path, Path]) -> None:
    _, shards = tree_and_shards
    source = open_shards(shards / "train-{000001..000002}.tar")
    assert [s.path.name for s in source.train] == ["train-000001.tar", "train-000002.tar"]
    assert len(source.labels("train")) == 10 and len(source.val) == 2
    with pytest.raises(ValueError, match=r"train-000006\.tar is not a train shard of"):
        open_shards(shards / "train-{000005..000007}.tar")


def test_ranks_and_workers_read_every_sample_once(tree_and_shards: tuple[Path, Path]) -> None:
    _, shards = tree_and_shards
    source = open_shards(shards)
    everything = [s.source for shard in source.train for s in read_shard(shard.path)]
    assert len(everything) == len(set(everything)) == 27
    # Validation: shards in order, split by rank and worker, nothing left out or repeated.
    seen = []
    for rank in range(2):
        ds = ShardDataset(source.train, EvalPreset(SPEC), rank, 2, train=False, workers=3)
        for worker in range(3):
            seen += keys(ds, worker)
    assert sorted(seen) == sorted(everything)
    # The shard positions: a partition over ranks x workers.
    positions = [i for r in range(3) for w in range(2) for i in assign(11, r, 3, w, 2)]
    assert sorted(positions) == list(range(11))


def test_training_gives_every_rank_the_same_steps(tree_and_shards: tuple[Path, Path]) -> None:
    _, shards = tree_and_shards
    source = open_shards(shards)  # shards of 5, 5, 5, 5, 5 and 2 samples
    per_rank = []
    seen: list[str] = []
    for rank in range(2):
        ds = ShardDataset(source.train, EvalPreset(SPEC), rank, 2, seed=3, workers=2)
        ds.set_epoch(1)
        counts = [len(keys(ds, w)) for w in range(2)]
        assert counts == ds.quotas()
        per_rank.append(counts)
        seen += [k for w in range(2) for k in keys(ds, w)]
    assert per_rank[0] == per_rank[1]  # same batches per worker on both ranks
    assert len(seen) == len(set(seen))  # nothing repeated; the surplus waits for another epoch
    assert len(seen) >= 27 - 2 * 5

    # Equal shards, as many as ranks x workers: every sample exactly once, in a new order
    # each epoch.
    equal = source.train[:4]
    orders = []
    for epoch in (0, 1):
        got = []
        for rank in range(2):
            ds = ShardDataset(equal, EvalPreset(SPEC), rank, 2, seed=3, workers=2)
            ds.set_epoch(epoch)
            got += [k for w in range(2) for k in keys(ds, w)]
        assert sorted(got) == sorted(s.source for sh in equal for s in read_shard(sh.path))
        orders.append(got)
    assert orders[0] != orders[1]


def test_a_dataloader_with_workers_reads_its_quota(tree_and_shards: tuple[Path, Path]) -> None:
    _, shards = tree_and_shards
    source = open_shards(shards)
    ds = ShardDataset(source.train, EvalPreset(SPEC), 0, 1, seed=0, workers=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == len(ds) == 27
    assert sorted(labels.tolist()) == sorted(source.labels("train").tolist())


def test_an_undecodable_sample_is_replaced_so_counts_hold(tmp_path: Path, capsys) -> None:
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    members = encode_sample("a", buf.getvalue(), "png", 1, {})
    members += encode_sample("b", b"not an image", "png", 2, {})
    members += encode_sample("c", buf.getvalue(), "png", 0, {})
    write_tar(tmp_path / "s.tar", members)
    ds = ShardDataset([Shard(tmp_path / "s.tar", 3, (1, 1, 1))], EvalPreset(SPEC), train=False)
    labels = [y for _, y in ds.stream(0)]
    assert labels == [1, 0, 0]
    assert "skipping undecodable sample s.tar:b" in capsys.readouterr().err


def test_shards_cli_and_training_on_shards(
    tree_and_shards: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    tree, _ = tree_and_shards
    out = tmp_path / "shards"
    assert cli.main(["shards", str(tree), str(out), "--shard-size", "4"]) == 0
    assert "train: 28 images in 7 shards" in capsys.readouterr().out
    assert cli.main(["shards", str(tree), str(out)]) == 1
    assert "already holds shards" in capsys.readouterr().out

    run = tmp_path / "run"
    argv = ["--data-path", str(out), "--model", "digits_cnn_w4", "--input-size", "16"]
    argv += ["--epochs", "1", "-b", "8", "-j", "0", "--no-progress", "--output-dir", str(run)]
    assert train.main(argv) == 0
    ckpt = torch.load(run / "checkpoint.pth", weights_only=True)
    assert ckpt["class_names"] == ["0", "1", "2"]
    assert ckpt["data"] == {"train_images": 28, "val_images": 8, "skipped_files": 0}
    assert "total      28       8" in capsys.readouterr().out
