"""Shared fixtures: real photos, a tiny real model repository, and real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imgclf.client.bench.launcher import ServerProcess, start_server
from tests.images import encode
from tests.tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODELS = REPO_ROOT / "models"


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photos from scikit-image, as JPEG bytes."""
    from skimage import data

    return {
        name: encode(getattr(data, name)(), "JPEG", quality=92)
        for name in ("chelsea", "coffee", "astronaut", "rocket")
    }


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_tiny_model(root / "tiny" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="session")
def tiny_server(
    tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real server on the tiny model, with a batching window wide enough to batch."""
    server = start_server(
        tiny_repo,
        tmp_path_factory.mktemp("tiny-server"),
        "--max-queue-delay-ms", "20", "--max-batch-size", "8",
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server on the bundled model repository, as `make serve` runs it."""
    for name in ("efficientnet_lite0", "digits"):
        if not (BUNDLED_MODELS / name / "1" / "model.onnx").is_file():
            pytest.fail(f"bundled model {name} is missing: run `make models`")
    server = start_server(BUNDLED_MODELS, tmp_path_factory.mktemp("bundled-server"))
    yield server
    server.stop()
