"""Helpers shared by the service unit tests: encoders, crafted headers, a tiny model repository."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image

from service.core import Core
from service.metrics import Metrics
from service.settings import ServerSettings
from tests.images import encode
from tests.tiny_model import make_tiny_model

TINY_SIZE = 16


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


def make_core(repo: Path, **settings: Any) -> Core:
    """A Core over `repo` with every model loaded (CPU, small thread pools)."""
    settings.setdefault("providers", "cpu")
    settings.setdefault("intra_op_threads", 1)
    settings.setdefault("preprocess_threads", 2)
    core = Core(ServerSettings(model_repository=repo, **settings), Metrics())
    core.load_all()
    return core


@contextlib.asynccontextmanager
async def serving(core: Core) -> AsyncIterator[Core]:
    """Start the core's batchers in the running loop; drain and close on exit."""
    core.start()
    try:
        yield core
    finally:
        await core.close()
