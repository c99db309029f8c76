"""Long-lived streams against a real server: idle streams at shutdown, and streams whose
client sends and never reads.

    python -m benchmarks.streams                              # both, efficientnet_lite0
    python -m benchmarks.streams --check                      # exit 1 when a bound is broken
    python -m benchmarks.streams --scenario never-reading --target 127.0.0.1:8001 --pid 12345

`idle` (always starts its own server, 127.0.0.1, free ports, since it stops it): `--watches`
idle grpc.health.v1.Health/Watch streams and `--idle-streams` idle ModelStreamInfer streams,
each on its own connection (as separate clients, service meshes among them, keep them), plus
one request in flight on another stream; then SIGTERM. Prints when the in-flight answer
came, when every stream had ended and when the process exited. Bound (SECURITY.md): the
streams end within `--max-drain-s` (1 s) after the in-flight work is answered.

`never-reading` (starts a server, or `--target` with `--pid` for its memory): `--readers`
clients each write up to `--requests` requests on one ModelStreamInfer stream and never read
an answer, with a fixed HTTP/2 receive window (`--client-window-kib`). Prints how many each
could send, how many the server computed and when it stopped, the server's resident memory
growth and CPU use, and the latency of a normal client's ModelInfer before and meanwhile.
Bounds: the server stops computing within `--max-wait-s`, no client could send everything,
growth under `--max-growth-mib` (default: 16 requests per stream at 4 x their size, the
memory budget's factor, + 64 MiB), the normal client answered OK within `--max-latency-s`.

Loopback only, every wait bounded. Requests are zero tensors shaped by the model's metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import REPO_ROOT, channels, rss_bytes
from imgclf._generated.inference import grpc_service_pb2 as oip_pb
from imgclf._generated.inference import grpc_service_pb2_grpc as oip_grpc
from imgclf.client.bench.launcher import Target, server_or_target
from imgclf.client.bench.scrape import fetch, total
from imgclf.client.channel import OPTIONS
from imgclf.grpc.inference import STREAM_WINDOW

MIB = 1024 * 1024
DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT64": np.int64}
WAIT_S = 30.0
"""The longest any single wait of this script lasts."""


# --- requests ------------------------------------------------------------------------------


async def request_for(channel: grpc.aio.Channel, model: str) -> oip_pb.ModelInferRequest:
    """One zero-filled request of batch 1 for `model`, shaped by its ModelMetadata."""
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    meta = await stub.ModelMetadata(oip_pb.ModelMetadataRequest(name=model), timeout=WAIT_S)
    tensor = meta.inputs[0]
    shape = [1 if d < 0 else d for d in tensor.shape]
    request = oip_pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
    request.raw_input_contents.append(np.zeros(shape, DTYPES[tensor.datatype]).tobytes())
    return request


def numbered(request: oip_pb.ModelInferRequest, i: int) -> oip_pb.ModelInferRequest:
    copy = oip_pb.ModelInferRequest()
    copy.CopyFrom(request)
    copy.id = str(i)
    return copy


# --- idle streams at shutdown --------------------------------------------------------------


@dataclass
class Ended:
    kind: str
    seconds: float = float("inf")
    """After SIGTERM."""
    how: str = ""
    answered_s: float | None = None
    """After SIGTERM, when the stream's last answer came (if one came)."""


async def watch_until_end(call: grpc.aio.UnaryStreamCall, t0: list[float], out: Ended) -> None:
    last = ""
    try:
        while (reply := await call.read()) is not grpc.aio.EOF:
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        out.how = f"{(await call.code()).name} after {last}"
    except grpc.aio.AioRpcError as exc:
        out.how = exc.code().name
    out.seconds = time.monotonic() - t0[0]


async def stream_until_end(call: grpc.aio.StreamStreamCall, t0: list[float], out: Ended) -> None:
    answers = 0
    try:
        while (reply := await call.read()) is not grpc.aio.EOF:
            answers += 1
            if reply.error_message:
                out.how = f"error {reply.error_message!r} "
            else:
                out.answered_s = time.monotonic() - t0[0]
        out.how += f"{answers} answer(s), then {(await call.code()).name}"
    except grpc.aio.AioRpcError as exc:
        out.how += f"{answers} answer(s), then {exc.code().name}"
    out.seconds = time.monotonic() - t0[0]


@dataclass
class IdleResult:
    streams: list[Ended]
    inflight_s: float
    """SIGTERM to the in-flight answer."""
    ended_s: float
    exit_s: float
    exit_code: int | None
    failures: list[str] = field(default_factory=list)


async def idle_at_shutdown(
    repo: Path,
    model: str,
    server_args: list[str],
    watches: int,
    idle: int,
    max_drain_s: float,
    inflight_ms: float,
) -> IdleResult:
    """The server batches with a window of `inflight_ms`, so that the last request is still
    in flight when SIGTERM lands 50 ms after it was written."""
    window = ["--max-queue-delay-ms", f"{inflight_ms:g}"]
    with server_or_target(None, repo, shlex.join([*server_args, *window]), say=print) as target:
        assert target.server is not None
        proc = target.server.proc
        conns = channels(target.address, watches + idle + 1)
        try:
            request = await request_for(conns[-1], model)
            t0 = [0.0]
            ended: list[Ended] = []
            tasks = []
            for c in conns[:watches]:
                call = health_pb2_grpc.HealthStub(c).Watch(health_pb2.HealthCheckRequest())
                assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING
                ended.append(Ended("Watch"))
                tasks.append(asyncio.ensure_future(watch_until_end(call, t0, ended[-1])))
            streams = []
            for i, c in enumerate(conns[watches:]):
                call = oip_grpc.GRPCInferenceServiceStub(c).ModelStreamInfer()
                await call.write(numbered(request, i))
                reply = await asyncio.wait_for(call.read(), WAIT_S)
                assert not reply.error_message, reply.error_message
                streams.append(call)
            await asyncio.sleep(0.5)  # every stream idle, the client never closes its side
            await streams[-1].write(numbered(request, len(streams)))  # in flight at SIGTERM
            await asyncio.sleep(0.05)  # read by the server
            for call in streams:
                kind = "in-flight" if call is streams[-1] else "ModelStreamInfer"
                ended.append(Ended(kind))
                tasks.append(asyncio.ensure_future(stream_until_end(call, t0, ended[-1])))
            t0[0] = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait(tasks, timeout=WAIT_S)
            ended_s = max(e.seconds for e in ended)
            code = await asyncio.to_thread(exit_code, proc, WAIT_S)
            exit_s = time.monotonic() - t0[0]
        finally:
            for c in conns:
                await c.close()
    inflight = next(e for e in ended if e.kind == "in-flight")
    inflight_s = inflight.answered_s or 0.0
    result = IdleResult(ended, inflight_s, ended_s, exit_s, code)
    if inflight.answered_s is None:
        result.failures.append(f"the in-flight request was not answered: {inflight.how}")
    if ended_s > max_drain_s + inflight_s:
        result.failures.append(
            f"streams ended {ended_s:.2f} s after SIGTERM, over {max_drain_s:g} s + the "
            f"in-flight work ({inflight_s:.2f} s)"
        )
    if code != 0:
        result.failures.append(f"server exit code {code}")
    return result


def exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The process's exit code, None if it is still running after `timeout`."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


# --- never-reading streams -----------------------------------------------------------------


async def cpu_share(pid: int | None, seconds: float = 1.0) -> float | None:
    """The share of one core process `pid` used over the next `seconds` (None: no pid)."""

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    if not pid:
        return None
    start, t = cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu() - start) / (time.monotonic() - t)


async def normal_client(
    stub: oip_grpc.GRPCInferenceServiceStub, request: oip_pb.ModelInferRequest, n: int = 5
) -> tuple[list[float], list[str]]:
    """`n` ModelInfer calls one after another: their latencies (s) and codes."""
    seconds, codes = [], []
    for i in range(n):
        t = time.monotonic()
        try:
            reply = await stub.ModelInfer(numbered(request, i), timeout=WAIT_S)
            codes.append("OK" if reply.outputs else "EMPTY")
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code().name)
        seconds.append(time.monotonic() - t)
    return seconds, codes


@dataclass
class NeverReadingResult:
    sent: list[int]
    computed: float
    stopped_s: float | None
    """When the server stopped computing (None: not within the wait)."""
    growth_mib: float | None
    bound_mib: float
    normal_s: list[float]
    normal_codes: list[str]
    baseline_s: list[float]
    baseline_codes: list[str]
    idle_cpu: float | None
    """The server's CPU use (share of one core) before the streams, idle."""
    quiet_cpu: float | None
    """The same with the never-reading streams open, nothing being computed."""
    failures: list[str] = field(default_factory=list)


async def never_reading(
    target: Target,
    model: str,
    readers: int,
    requests: int,
    settle_s: float,
    max_growth_mib: float,
    max_latency_s: float,
    client_window_kib: int,
    max_wait_s: float,
) -> NeverReadingResult:
    window = (
        [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", client_window_kib * 1024)]
        if client_window_kib
        else []
    )
    conns = [
        grpc.aio.insecure_channel(
            target.address,
            options=[*OPTIONS, ("grpc.use_local_subchannel_pool", 1), *window],
        )
        for _ in range(readers)
    ] + channels(target.address, 1)
    calls: list[grpc.aio.StreamStreamCall] = []
    writers: list[asyncio.Task[None]] = []
    sent = [0] * readers

    def computed() -> float:
        if not target.metrics_url:
            return float("nan")
        return total(fetch(target.metrics_url), "imgclf_requests_total", model=model)

    try:
        request = await request_for(conns[-1], model)
        normal = oip_grpc.GRPCInferenceServiceStub(conns[-1])
        # Warm up at full batches first, so the growth measured is the streams', not the
        # runtime's first allocations for batched inference.
        await asyncio.gather(
            *(normal.ModelInfer(numbered(request, i), timeout=WAIT_S) for i in range(32))
        )
        base_s, base_codes = await normal_client(normal, request)
        before_rss = rss_bytes(target.pid) if target.pid else 0
        peak = before_rss
        idle_cpu = await cpu_share(target.pid)
        before = computed()

        async def write_all(i: int, call: grpc.aio.StreamStreamCall) -> None:
            for n in range(requests):
                await call.write(numbered(request, n))  # returns once the transport took it
                sent[i] += 1

        for i, c in enumerate(conns[:readers]):
            calls.append(oip_grpc.GRPCInferenceServiceStub(c).ModelStreamInfer())
            writers.append(asyncio.ensure_future(write_all(i, calls[-1])))
        # Until the server stops computing (nothing new for `settle_s`), bounded.
        started = time.monotonic()
        last, still_since, until = -1.0, started, started + max_wait_s
        settled = False
        while time.monotonic() < until:
            await asyncio.sleep(0.1)
            if target.pid:
                peak = max(peak, rss_bytes(target.pid))
            now = computed() if target.metrics_url else float(sum(sent))
            if now != last:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= settle_s:
                settled = True
                break
        stopped_s = still_since - started if settled else None
        done = computed() - before
        quiet_cpu = await cpu_share(target.pid)  # nothing is being computed now
        # A normal client meanwhile (the never-reading streams still open).
        normal_s, codes = await normal_client(normal, request)
        if target.pid:
            peak = max(peak, rss_bytes(target.pid))
    finally:
        for task in writers:
            task.cancel()
        for call in calls:
            call.cancel()
        for c in conns:
            await c.close()
    growth = (peak - before_rss) / MIB if target.pid else None
    bound = max_growth_mib or readers * STREAM_WINDOW * request.ByteSize() * 4 / MIB + 64
    result = NeverReadingResult(
        sent, done, stopped_s, growth, bound, normal_s, codes, base_s, base_codes, idle_cpu,
        quiet_cpu,
    )  # fmt: skip
    if stopped_s is None:
        result.failures.append(
            f"the server still computed after {max_wait_s:g} s: the streams were not pushed back"
        )
    if max(sent) >= requests:
        result.failures.append(f"a client sent all {requests} requests: nothing pushed back")
    if growth is not None and growth > bound:
        result.failures.append(f"server grew by {growth:.0f} MiB, over {bound:.0f} MiB")
    if set(codes) != {"OK"} or max(normal_s) > max_latency_s:
        result.failures.append(
            f"the normal client: {codes}, slowest {max(normal_s):.2f} s (bound {max_latency_s:g})"
        )
    return result


# --- command line --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.streams", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--scenario", choices=["both", "idle", "never-reading"], default="both")
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument(
        "--server-args",
        default="--instances 1",
        help="extra `imgclf serve` flags of the servers started here",
    )
    p.add_argument("--target", help="HOST:PORT of a running server (never-reading only)")
    p.add_argument("--metrics-url", default="", help="its /metrics URL (with --target)")
    p.add_argument("--pid", type=int, help="its process id, for its memory (with --target)")
    p.add_argument("--watches", type=int, default=8, help="idle: Health/Watch streams")
    p.add_argument("--idle-streams", type=int, default=8, help="idle: ModelStreamInfer streams")
    p.add_argument("--max-drain-s", type=float, default=1.0, help="idle: bound beyond in-flight")
    p.add_argument(
        "--inflight-ms",
        type=float,
        default=300.0,
        help="idle: the server's batching window, which the request in flight waits in",
    )
    p.add_argument("--readers", type=int, default=4, help="never-reading: clients")
    p.add_argument("--requests", type=int, default=1000, help="never-reading: per client, at most")
    p.add_argument(
        "--settle-s", type=float, default=2.0, help="never-reading: quiet time = done computing"
    )
    p.add_argument(
        "--max-growth-mib",
        type=float,
        default=0.0,
        help="never-reading: bound (0: readers x 16 x request size x 4 + 64 MiB, the window of "
        "each stream at the memory budget's 4 x per message, plus headroom)",
    )
    p.add_argument(
        "--client-window-kib",
        type=int,
        default=64,
        help="never-reading: each such client's HTTP/2 receive window per stream, fixed (gRPC's "
        "initial 64 KiB; 0: gRPC's default, which grows it by BDP probing to megabytes on "
        "loopback, so that thousands of small answers fit in it before anything pushes back)",
    )
    p.add_argument(
        "--max-wait-s",
        type=float,
        default=60.0,
        help="never-reading: the server must stop computing within this",
    )
    p.add_argument("--max-latency-s", type=float, default=2.0, help="never-reading: normal client")
    p.add_argument("--check", action="store_true", help="exit 1 when a bound is broken")
    return p


def report_idle(r: IdleResult, args: argparse.Namespace) -> None:
    print(
        f"idle        {args.watches} Watch + {args.idle_streams} ModelStreamInfer idle streams, "
        f"1 request in flight, SIGTERM:"
    )
    for kind in ("Watch", "ModelStreamInfer", "in-flight"):
        rows = [e for e in r.streams if e.kind == kind]
        if rows:
            times = [e.seconds for e in rows]
            hows = sorted({e.how for e in rows})
            print(
                f"            {kind:17s} x{len(rows)}: ended {min(times):.2f}-{max(times):.2f} s "
                f"after SIGTERM ({'; '.join(hows)})"
            )
    print(
        f"            in-flight answered {r.inflight_s:.2f} s, every stream ended "
        f"{r.ended_s:.2f} s, process exited {r.exit_s:.2f} s after SIGTERM (code {r.exit_code})"
    )


def report_never_reading(r: NeverReadingResult, args: argparse.Namespace) -> None:
    growth = "unknown (no --pid)" if r.growth_mib is None else f"{r.growth_mib:+.0f} MiB"
    window = f"{args.client_window_kib} KiB" if args.client_window_kib else "gRPC's, BDP-grown"
    stopped = (
        f"none after {r.stopped_s:.1f} s"
        if r.stopped_s is not None
        else f"still computing after {args.max_wait_s:g} s"
    )
    print(
        f"never-read  {args.readers} clients writing up to {args.requests} requests each, "
        f"never reading (client window {window}): sent {r.sent}, server computed "
        f"{r.computed:.0f}, {stopped}, server memory {growth} at peak"
    )
    cpu = (
        f"server CPU idle {r.idle_cpu:.0%} of a core before, {r.quiet_cpu:.0%} with the streams "
        "open, nothing computed"
        if r.idle_cpu is not None and r.quiet_cpu is not None
        else "server CPU unknown (no --pid)"
    )
    print(f"            bound {r.bound_mib:.0f} MiB; {cpu}")
    print(
        f"            a normal client before: {r.baseline_codes}, latency "
        f"{', '.join(f'{s * 1000:.0f}' for s in r.baseline_s)} ms; meanwhile: {r.normal_codes}, "
        f"latency {', '.join(f'{s * 1000:.0f}' for s in r.normal_s)} ms"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    server_args = shlex.split(args.server_args)
    failures: list[str] = []
    print(f"streams: model {args.model}, server args {args.server_args!r}")
    if args.scenario in ("both", "idle"):
        if args.target:
            print("idle        skipped: it stops the server, so it needs its own (no --target)")
        else:
            idle = asyncio.run(
                idle_at_shutdown(
                    args.model_repository, args.model, server_args,
                    args.watches, args.idle_streams, args.max_drain_s, args.inflight_ms,
                )
            )  # fmt: skip
            report_idle(idle, args)
            failures += [f"idle: {f}" for f in idle.failures]
    if args.scenario in ("both", "never-reading"):

        def go(target: Target) -> NeverReadingResult:
            return asyncio.run(
                never_reading(
                    target, args.model, args.readers, args.requests, args.settle_s,
                    args.max_growth_mib, args.max_latency_s, args.client_window_kib,
                    args.max_wait_s,
                )
            )  # fmt: skip

        if args.target:
            nr = go(Target(args.target, args.metrics_url, args.pid))
        else:
            with server_or_target(
                None, args.model_repository, shlex.join(server_args), say=print
            ) as target:
                nr = go(target)
        report_never_reading(nr, args)
        failures += [f"never-reading: {f}" for f in nr.failures]
    for failure in failures:
        print(f"FAILED: {failure}")
    print("all bounds held" if not failures else f"{len(failures)} bound(s) broken")
    return 1 if failures and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
