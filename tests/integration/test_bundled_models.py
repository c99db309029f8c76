"""The bundled models served the way `make serve` serves them, driven by real clients."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgclf.client import Client
from imgclf.client.bench.launcher import ServerProcess
from imgclf.training.data.digits import digits_split, load_digits_images
from tests.images import encode

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def classify_cli(server: ServerProcess, paths: list[Path]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "classify", *map(str, paths),
         "--server", server.target, "--model", "efficientnet_lite0", "--top-k", "5", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_real_photos_through_the_cli(
    bundled_server: ServerProcess, photos: dict[str, bytes], tmp_path: Path
) -> None:
    paths = []
    for name in ("chelsea", "coffee"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(photos[name])
        paths.append(path)
    reply = classify_cli(bundled_server, paths)
    assert reply["model"] == "efficientnet_lite0"
    chelsea, coffee = (r["top"] for r in reply["results"])
    assert chelsea[0]["label"] in CAT_CLASSES, chelsea
    assert {"espresso", "cup"} & {s["label"] for s in coffee[:3]}, coffee
    assert all(0.0 <= s["probability"] <= 1.0 for s in chelsea + coffee)


def test_cli_prints_a_readable_table(
    bundled_server: ServerProcess, photos: dict[str, bytes], tmp_path: Path
) -> None:
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(photos["chelsea"])
    out = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "classify", str(path), "--server",
         bundled_server.target, "--model", "efficientnet_lite0", "--top-k", "3"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0].startswith("model efficientnet_lite0 version")
    assert str(path) in lines
    assert sum(1 for line in lines if line.strip().startswith(("1.", "2.", "3."))) == 3
    assert "%" in out


def test_digits_held_out_split_through_grpc(bundled_server: ServerProcess) -> None:
    images, labels, _ = load_digits_images()
    _, val_idx = digits_split(labels)
    pngs = [encode(images[i], "PNG") for i in val_idx]
    expected = [str(labels[i]) for i in val_idx]
    chunks = [range(i, min(i + 16, len(pngs))) for i in range(0, len(pngs), 16)]

    def classify_chunk(chunk: range) -> list[str]:
        with Client(bundled_server.target) as client:
            reply = client.classify([pngs[i] for i in chunk], model="digits", top_k=1)
        return [r.top[0].label for r in reply.results]

    with ThreadPoolExecutor(4) as pool:
        predicted = [label for part in pool.map(classify_chunk, chunks) for label in part]
    accuracy = sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)
    assert len(expected) >= 350
    assert accuracy >= 0.97, f"held-out accuracy through gRPC: {accuracy:.4f}"
