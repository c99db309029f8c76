"""Reliability benchmarks: overload (`benchmarks.overload`), soak (`benchmarks.soak`) and a
bounded decode fuzz run (`benchmarks.fuzz_decode`). Each is `python -m benchmarks.NAME --help`,
bounded by `--duration`, and talks only to 127.0.0.1 unless given a `--target`.
`benchmarks.gpu_check` (with `benchmarks.gpu_stage`) proves or disproves the GPU path in one
run on a GPU host; see docs/performance.md.

This module holds what the scripts share beyond the bench's own pieces (the server they start
or target, percentiles and /metrics reading all come from imgclf.client.bench): the flags that
say which server, the asyncio client call that records one outcome, the test images, and the
end of a run (its JSON record, its failures, its exit status).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client.bench.stats import percentile
from imgclf.client.channel import make_aio_channel

REPO_ROOT = Path(__file__).resolve().parents[1]
RETRY_HINT_KEYS = ("retry-after-ms", "grpc-retry-pushback-ms")
"""Trailing metadata a server may use to say when to retry (grpc-retry-pushback-ms is the
one gRPC's own retry policy honours)."""


# --- the server ------------------------------------------------------------------------------


def add_server_arguments(p: argparse.ArgumentParser, server_args: str = "") -> None:
    """The flags that say which server a script loads: `--target`, or else the
    `--model-repository` and `--server-args` of the `imgclf serve` it starts (for
    imgclf.client.bench.launcher.server_or_target)."""
    p.add_argument("--target", help="HOST:PORT of a running server (default: start one)")
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "models")
    default = f" (default: {server_args!r})" if server_args else ""
    p.add_argument(
        "--server-args", default=server_args, help=f"extra `imgclf serve` flags{default}"
    )


def channels(address: str, n: int) -> list[grpc.aio.Channel]:
    """`n` separate connections (each its own HTTP/2 connection, like separate clients)."""
    return [make_aio_channel(address, None, own_connection=True) for _ in range(n)]


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


T = TypeVar("T")


async def timed(call: Awaitable[T], label: Callable[[T], str]) -> Outcome:
    """Await one RPC and record what happened (never raises for an RPC error): its code, its
    time, `label(reply)` when OK, else the error message and any retry hint."""
    started = time.monotonic()
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        metadata = exc.trailing_metadata() or ()
        hint = ",".join(f"{k}={v}" for k, v in metadata if k in RETRY_HINT_KEYS)
        return Outcome(
            exc.code().name, time.monotonic() - started, message=exc.details() or "", hint=hint
        )
    return Outcome("OK", time.monotonic() - started, label=label(reply))


def top_label(reply: pb.ClassifyResponse) -> str:
    """The first image's top-1 label ("" when there is none)."""
    return reply.results[0].top[0].label if reply.results and reply.results[0].top else ""


async def classify(
    stub: pb_grpc.ImageClassifierStub, request: pb.ClassifyRequest, timeout: float
) -> Outcome:
    """Send one Classify and record what happened (never raises for an RPC error)."""
    return await timed(stub.Classify(request, timeout=timeout), top_label)


# --- figures -------------------------------------------------------------------------------


def percentiles_ms(seconds: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """{"p50": ms, ...}, nearest-rank like every percentile of `imgclf bench`
    (imgclf.client.bench.stats.percentile); empty when there is nothing to measure."""
    if not seconds:
        return {}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {f"p{q}": round(percentile(ms, q), 2) for q in qs}


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


def image_bytes(spec: str | Path) -> bytes:
    """What an `--image` flag names: a built-in sample_image ("photo", "red") or a file."""
    return sample_image(spec) if spec in ("photo", "red") else Path(spec).read_bytes()


# --- the end of a run ------------------------------------------------------------------------


def finish(
    name: str, failures: Sequence[str], record: object = None, json_path: Path | None = None
) -> int:
    """Record a run: `record` as JSON in `json_path` (a script's `--json`), a FAILED line per
    failure, then the verdict; returns the exit status (0 when nothing failed, else 1)."""
    if json_path:
        json_path.write_text(json.dumps(record, indent=2))
    for failure in failures:
        print(f"FAILED: {failure}")
    print(f"{name} passed" if not failures else f"{name} FAILED: {len(failures)} check(s)")
    return 1 if failures else 0
