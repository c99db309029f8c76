"""Shared fixtures: real photos, a tiny real model repository, and real servers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgclf.client.bench.launcher import ServerProcess, start_server
from tests.images import encode
from tests.tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODELS = REPO_ROOT / "models"
REQUIRE_TOOLS = "IMGCLF_REQUIRE_TOOLS"
"""Set to 1 (.ci/run does; so does CI=true), a test whose tool is absent fails instead of
skipping."""


def tools_required() -> bool:
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return ci or os.environ.get(REQUIRE_TOOLS) == "1"


def tool_missing(reason: str) -> None:
    """Skip the calling test because a tool it needs is absent, saying which and why; when
    tools are required (IMGCLF_REQUIRE_TOOLS=1 or CI=true), fail instead: CI installs every
    tool, so there a skip would hide a test that never ran."""
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_TOOLS}=1 or CI=true: required tools must be present)")
    pytest.skip(f"{reason}; with {REQUIRE_TOOLS}=1 this fails instead")


def require_executable(name: str, path: str | Path | None = None) -> str:
    """The path of an executable (found on PATH, or at `path`), or tool_missing."""
    found = str(path) if path is not None and Path(path).is_file() else shutil.which(name)
    if found is None:
        tool_missing(f"{name} is not installed")
    assert found is not None
    return found


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
