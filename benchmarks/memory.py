"""Memory under the heaviest legal inputs: the server's peak resident memory while many
clients at once send what costs it the most memory, and what it holds afterwards.

    python -m benchmarks.memory                                   # models/, 16 clients
    python -m benchmarks.memory --concurrency 64 --server-args "--instances 2"
    python -m benchmarks.memory --target 127.0.0.1:8001 --pid 12345   # a server already running

Phases, each `--concurrency` clients x `--requests` calls at once (loopback only, bounded):

- `messages`: Classify requests of `--message-mib` MiB of random bytes (the largest message
  the server accepts by default is budget/64: 16 MiB; refused as INVALID_ARGUMENT after
  receipt, or RESOURCE_EXHAUSTED when the memory budget is full);
- `png16`: a 90 KB 6300x6300 16-bit greyscale PNG (39.7 M pixels, under --max-pixels);
- `rgba`: a 6300x6300 RGBA PNG (the mode that costs the most per pixel to decode);
- `jpeg`: a 6300x6300 JPEG;
- `unauthenticated` (with `--token`; starts its own server with that token): the `messages`
  load without the token.

The server's resident memory (/proc/<pid>/status, VmRSS) is sampled every 10 ms; each phase
reports its peak, what is held `--settle` seconds after it, and the status codes seen. After
all phases a small request must still be answered OK. Exits 1 when the peak passes `--limit-mib`
(the deployment's memory limit, 2048) or the server stops answering.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from benchmarks import REPO_ROOT, channels, rss_bytes, sample_image
from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client.bench.launcher import Target, server_or_target

MIB = 1024 * 1024
SIDE = 6300
"""39.7 M pixels: just under the default --max-pixels of 40 M."""


def png16(side: int = SIDE) -> bytes:
    """A smooth 16-bit greyscale PNG: tiny encoded, `side`^2 pixels decoded."""
    from PIL import Image

    ramp = (np.arange(side, dtype=np.uint32) * 65535 // max(1, side - 1)).astype(np.uint16)
    img = Image.frombytes("I;16", (side, side), np.tile(ramp, (side, 1)).tobytes())
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def rgba_png(side: int = SIDE) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (side, side), (200, 30, 30, 128)).save(buf, "PNG")
    return buf.getvalue()


def big_jpeg(side: int = SIDE) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@dataclass
class Phase:
    name: str
    payload_bytes: int
    calls: int
    seconds: float = 0.0
    peak_mib: float = 0.0
    held_after_mib: float = 0.0
    codes: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    target: str
    concurrency: int
    baseline_mib: float
    phases: list[Phase]
    peak_mib: float
    serves_after: bool
    limit_mib: float

    @property
    def ok(self) -> bool:
        return self.serves_after and self.peak_mib < self.limit_mib


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a task; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_bytes(self.pid))


async def run_phase(
    target: Target,
    name: str,
    payload: bytes,
    concurrency: int,
    requests: int,
    settle: float,
    model: str,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Phase:
    assert target.pid is not None
    chans = channels(target.address, concurrency)
    stubs = [pb_grpc.ImageClassifierStub(c) for c in chans]
    request = pb.ClassifyRequest(model=model, images=[pb.Image(encoded=payload)], top_k=1)
    codes: Counter[str] = Counter()

    async def client(stub: pb_grpc.ImageClassifierStub) -> None:
        for _ in range(requests):
            try:
                await stub.Classify(request, timeout=120, metadata=metadata)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1

    started = time.monotonic()
    with RssSampler(target.pid) as sampler:
        await asyncio.gather(*(client(s) for s in stubs))
    seconds = time.monotonic() - started
    for c in chans:
        await c.close()
    await asyncio.sleep(settle)
    return Phase(
        name, len(payload), concurrency * requests, round(seconds, 2),
        round(sampler.peak / MIB, 1), round(rss_bytes(target.pid) / MIB, 1), dict(codes),
    )  # fmt: skip


async def serves(target: Target, model: str, metadata: tuple[tuple[str, str], ...] = ()) -> bool:
    """Whether a small request is answered OK."""
    [chan] = channels(target.address, 1)
    image = pb.Image(encoded=sample_image("photo"))
    request = pb.ClassifyRequest(model=model, images=[image], top_k=1)
    try:
        await pb_grpc.ImageClassifierStub(chan).Classify(request, timeout=30, metadata=metadata)
        return True
    except grpc.aio.AioRpcError:
        return False
    finally:
        await chan.close()


PAYLOADS: dict[str, Callable[[argparse.Namespace], bytes]] = {
    "messages": lambda a: np.random.default_rng(0).bytes(int(a.message_mib * MIB)),
    "png16": lambda a: png16(),
    "rgba": lambda a: rgba_png(),
    "jpeg": lambda a: big_jpeg(),
}


async def measure(
    target: Target,
    args: argparse.Namespace,
    log: Callable[[str], None],
    metadata: tuple[tuple[str, str], ...] = (),
) -> Report:
    """Every phase but `unauthenticated` against `target` (calls carry `metadata`)."""
    assert target.pid is not None
    baseline = rss_bytes(target.pid) / MIB
    log(f"server pid {target.pid}: {baseline:.0f} MiB before the load")
    phases = []
    for name in args.phases:
        if name == "unauthenticated":
            continue
        phase = await run_phase(
            target, name, PAYLOADS[name](args), args.concurrency, args.requests, args.settle,
            args.model, metadata,
        )  # fmt: skip
        log(
            f"{name:10s} {phase.payload_bytes / MIB:8.2f} MiB x {phase.calls:3d}: "
            f"peak {phase.peak_mib:7.1f} MiB, held after {phase.held_after_mib:7.1f} MiB, "
            f"{phase.seconds:6.2f} s, {phase.codes}"
        )
        phases.append(phase)
    ok = await serves(target, args.model, metadata)
    peak = max([baseline, *(p.peak_mib for p in phases)])
    return Report(
        target.address, args.concurrency, round(baseline, 1), phases, peak, ok, args.limit_mib
    )


async def measure_unauthenticated(
    target: Target, args: argparse.Namespace, log: Callable[[str], None]
) -> Phase:
    phase = await run_phase(
        target, "unauthenticated", PAYLOADS["messages"](args), args.concurrency, args.requests,
        args.settle, args.model, metadata=(("authorization", "Bearer wrong"),),
    )  # fmt: skip
    log(
        f"unauthenticated {phase.payload_bytes / MIB:.2f} MiB x {phase.calls}: "
        f"peak {phase.peak_mib:.1f} MiB, held after {phase.held_after_mib:.1f} MiB, {phase.codes}"
    )
    return phase


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--server-args", default="", help="extra `imgclf serve` arguments (quoted)")
    p.add_argument("--target", help="an already running server (host:port); needs --pid")
    p.add_argument("--pid", type=int, help="process id of the --target server")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=2, help="calls per client per phase")
    p.add_argument("--message-mib", type=float, default=15.9)
    p.add_argument(
        "--phases", nargs="+", default=["messages", "png16", "rgba", "jpeg"],
        choices=[*PAYLOADS, "unauthenticated"],
    )  # fmt: skip
    p.add_argument("--token", default="", help="also run the unauthenticated phase")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--limit-mib", type=float, default=2048.0)
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log = print if not args.json else (lambda line: print(line, file=sys.stderr))
    if args.target and args.pid is None:
        raise SystemExit("--target needs --pid (the server's resident memory is read)")
    with server_or_target(
        args.target, args.model_repository, args.server_args, pid=args.pid, say=log
    ) as target:
        report = asyncio.run(measure(target, args, log))
    if args.token and not args.target:
        with_token = shlex.join([*shlex.split(args.server_args), "--auth-token", args.token])
        with server_or_target(None, args.model_repository, with_token, say=log) as target:
            phase = asyncio.run(measure_unauthenticated(target, args, log))
        report.phases.append(phase)
        report.peak_mib = max(report.peak_mib, phase.peak_mib)
    log(
        f"peak {report.peak_mib:.0f} MiB (limit {report.limit_mib:.0f}); "
        f"serves afterwards: {report.serves_after}"
    )
    if args.json:
        print(json.dumps(asdict(report), indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
