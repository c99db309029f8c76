"""Reliability benchmarks: overload (`benchmarks.overload`), soak (`benchmarks.soak`) and a
bounded decode fuzz run (`benchmarks.fuzz_decode`). Each is `python -m benchmarks.NAME --help`,
bounded by `--duration`, and talks only to 127.0.0.1 unless given a `--target`.
`benchmarks.gpu_check` (with `benchmarks.gpu_stage`) proves or disproves the GPU path in one
run on a GPU host; see docs/performance.md.

This module holds what the load benchmarks share: a server they start themselves, the
asyncio client call that records one outcome, percentiles, and the server's /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc

# /metrics reading is the bench tool's; these scripts re-export it under their own names.
from imgclf.client.bench.scrape import by_label as metric_by  # noqa: F401
from imgclf.client.bench.scrape import fetch as scrape  # noqa: F401
from imgclf.client.bench.scrape import total as metric_total  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
RETRY_HINT_KEYS = ("retry-after-ms", "grpc-retry-pushback-ms")
"""Trailing metadata a server may use to say when to retry (grpc-retry-pushback-ms is the
one gRPC's own retry policy honours)."""


# --- the server ------------------------------------------------------------------------------


@dataclass
class Target:
    """Where the load goes: a gRPC address, its /metrics URL (may be empty) and, for a server
    we started, its process id (for /proc/<pid>/status)."""

    address: str
    metrics_url: str = ""
    pid: int | None = None


@contextlib.contextmanager
def started_server(repository: Path, *args: str) -> Iterator[Target]:
    """`imgclf serve` on free ports on 127.0.0.1, SERVING, stopped (SIGTERM) on exit."""
    from imgclf.client.bench.launcher import start_server

    with tempfile.TemporaryDirectory(prefix="imgclf-reliability-") as workdir:
        server = start_server(repository, Path(workdir), *args)
        try:
            yield Target(server.target, server.metrics_url, server.proc.pid)
        finally:
            code = server.stop()
            if code != 0:
                print(f"server exited with {code}; its log:\n{server.log()[-4000:]}")


def channels(address: str, n: int) -> list[grpc.aio.Channel]:
    """`n` separate connections (each its own HTTP/2 connection, like separate clients)."""
    return [
        grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        for _ in range(n)
    ]


# --- one call ------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: str
    seconds: float
    label: str = ""
    """Top-1 label when OK."""
    message: str = ""
    hint: str = ""
    """A retry hint found in the trailing metadata, as KEY=VALUE."""


async def classify(
    stub: pb_grpc.ImageClassifierStub, request: pb.ClassifyRequest, timeout: float
) -> Outcome:
    """Send one Classify and record what happened (never raises for an RPC error)."""
    started = time.monotonic()
    try:
        reply = await stub.Classify(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        metadata = exc.trailing_metadata() or ()
        hint = ",".join(f"{k}={v}" for k, v in metadata if k in RETRY_HINT_KEYS)
        return Outcome(
            exc.code().name, time.monotonic() - started, message=exc.details() or "", hint=hint
        )
    except asyncio.CancelledError:
        raise
    label = reply.results[0].top[0].label if reply.results and reply.results[0].top else ""
    return Outcome("OK", time.monotonic() - started, label=label)


# --- figures -------------------------------------------------------------------------------


def percentiles_ms(seconds: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """{"p50": ms, ...}; empty when there is nothing to measure."""
    if not seconds:
        return {}
    values = np.percentile(np.asarray(seconds) * 1000.0, qs)
    return {f"p{q}": round(float(v), 2) for q, v in zip(qs, values, strict=True)}


def fmt_ms(p: dict[str, float]) -> str:
    return " / ".join(f"{v:.1f}" for v in p.values()) + " ms" if p else "-"


def rss_bytes(pid: int) -> int:
    """Resident set size of a local process, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sample_image(kind: str) -> bytes:
    """An encoded test image: "photo" (scikit-image's chelsea as JPEG, when installed; else a
    synthetic textured image) or "red" (a small red PNG, for the tiny test models)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    if kind == "red":
        Image.new("RGB", (40, 30), (220, 20, 30)).save(buf, "PNG")
        return buf.getvalue()
    try:
        from skimage import data

        pixels = data.chelsea()
    except ImportError:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG", quality=92)
    return buf.getvalue()
