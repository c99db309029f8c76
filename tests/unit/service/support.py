"""Helpers shared by the service unit tests: encoders, crafted headers, tiny model repositories,
and cores/managers started inside the running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.dataplane import Core
from imgclf.metrics.prometheus import Metrics
from imgclf.models.loader import ServedModel
from imgclf.models.manager import ModelManager
from imgclf.settings import ServerSettings
from tests.images import encode
from tests.tiny_model import make_tiny_model

TINY_SIZE = 16

HANG = 5.0
"""Generous bound on any wait in these tests; only reached when something is broken."""


def solid(rgb: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    """An encoded image of one colour; size is (width, height)."""
    return encode(Image.new("RGB", size, rgb), fmt)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels; its pixel data is bogus and tiny.

    Anything that decoded the pixels before checking the declared size would fail differently.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def make_repo(root: Path, name: str = "tiny", version: int = 1, **model_kwargs: Any) -> Path:
    """A model repository holding one tiny ONNX classifier at root/name/version/model.onnx."""
    model_kwargs.setdefault("size", TINY_SIZE)
    make_tiny_model(root / name / str(version) / "model.onnx", **model_kwargs)
    return root


def add_version(root: Path, name: str, version: int, **model_kwargs: Any) -> Path:
    """Put a tiny model version into a repository atomically (a poller never sees it half
    written): built beside the repository's models, then renamed into place."""
    model_kwargs.setdefault("size", TINY_SIZE)
    staging = root / f".staging-{name}-{version}"
    make_tiny_model(staging / "model.onnx", **model_kwargs)
    (root / name).mkdir(parents=True, exist_ok=True)
    target = root / name / str(version)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target / "model.onnx"


def server_settings(repo: Path, **settings: Any) -> ServerSettings:
    """Settings over `repo` for unit tests: CPU, one instance with one intra-op thread, no solo
    session, small thread pools."""
    settings.setdefault("providers", "cpu")
    settings.setdefault("instances", 1)
    settings.setdefault("solo_session", False)
    settings.setdefault("max_batch_size", 8)  # fixed: the auto size is timed on the machine
    settings.setdefault("intra_op_threads", 1)
    settings.setdefault("preprocess_threads", 2)
    return ServerSettings(model_repository=repo, **settings)


def make_core(repo: Path, **settings: Any) -> Core:
    """A Core over `repo` whose manager is not started yet (`serving` starts it in the loop)."""
    s = server_settings(repo, **settings)
    metrics = Metrics()
    return Core(s, metrics, ModelManager(s, metrics))


@contextlib.asynccontextmanager
async def serving(core: Core, load: list[str] | None = None) -> AsyncIterator[Core]:
    """Load the core's models in the running loop and mark it started; drain and close on
    exit (also when loading fails). `load` defaults to every model (explicit mode too)."""
    try:
        await core.manager.start(["*"] if load is None else load)
        core.mark_started()
        yield core
    finally:
        await core.close()


@contextlib.asynccontextmanager
async def managing(
    repo: Path, load: list[str] | None = None, metrics: Metrics | None = None, **settings: Any
) -> AsyncIterator[ModelManager]:
    """A started ModelManager over `repo`, closed on exit."""
    manager = ModelManager(server_settings(repo, **settings), metrics or Metrics())
    try:
        await manager.start(["*"] if load is None else load)
        yield manager
    finally:
        await manager.close()


async def eventually(check: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> None:
    """Wait until `check()` holds; fail after `timeout` seconds (a bounded poll)."""
    until = time.monotonic() + timeout
    while not check():
        if time.monotonic() > until:
            raise AssertionError(f"condition still false after {timeout}s")
        await asyncio.sleep(step)


async def let_run() -> None:
    """Give every ready task a chance to run (submits enqueue, cancellations land)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def submit_until_closed(model: ServedModel, tensor: np.ndarray) -> None:
    """Submit to a model leaving service until its batcher refuses with ModelNotReady (wrap in
    asyncio.wait_for: it never returns while the model still serves)."""
    while True:
        await model.batcher.submit(tensor)
        await asyncio.sleep(0.01)


# --- repository folders (no real model inside) ----------------------------------------------


def put_model(root: Path, name: str, version: str) -> Path:
    """A version folder with a model file (scanning never opens it, so any bytes do)."""
    path = root / name / version / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"onnx")
    return path


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def bump_mtime(path: Path, seconds: int = 10) -> None:
    """Move a file's mtime forward, so a change is seen whatever the filesystem's resolution."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))
