"""Reliability benchmarks: overload (`benchmarks.overload`), soak (`benchmarks.soak`) and a
bounded decode fuzz run (`benchmarks.fuzz_decode`). Each is `python -m benchmarks.NAME --help`,
bounded by `--duration`, and talks only to 127.0.0.1 unless given a `--target`.
`benchmarks.gpu_check` (with `benchmarks.gpu_stage`) proves or disproves the GPU path in one
run on a GPU host; see docs/performance.md.

This module holds what the load benchmarks share beyond the bench's own pieces (the server
they start or target, percentiles and /metrics reading all come from imgclf.client.bench):
the asyncio client call that records one outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client.bench.launcher import Target, server_or_target

# /metrics reading is the bench tool's; these scripts re-export it under their own names.
from imgclf.client.bench.scrape import by_label as metric_by  # noqa: F401
from imgclf.client.bench.scrape import fetch as scrape  # noqa: F401
from imgclf.client.bench.scrape import total as metric_total  # noqa: F401
from imgclf.client.bench.stats import percentile
from imgclf.client.channel import make_aio_channel

REPO_ROOT = Path(__file__).resolve().parents[1]
RETRY_HINT_KEYS = ("retry-after-ms", "grpc-retry-pushback-ms")
"""Trailing metadata a server may use to say when to retry (grpc-retry-pushback-ms is the
one gRPC's own retry policy honours)."""


# --- the server ------------------------------------------------------------------------------


@contextlib.contextmanager
def started_server(repository: Path, *args: str) -> Iterator[Target]:
    """`imgclf serve` on free ports on 127.0.0.1, SERVING, stopped (SIGTERM) on exit: the
    bench's "start a server or use --target" (imgclf.client.bench.launcher), always starting."""
    with server_or_target(None, repository, shlex.join(args)) as target:
        yield target
    code = target.server.proc.returncode if target.server else 0
    if code != 0:
        print(f"server exited with {code}; its log:\n{target.server.log()[-4000:]}")


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
