"""The load generator: grpc.aio clients (or HTTP/1.1 keep-alive connections, see
service/client/bench/http_wire.py) in one or more spawned processes, each with its own event loop,
sending pre-serialised requests (no protobuf work per request on either side of the client:
request bytes are built once, replies are not parsed).

Closed loop: C clients, each sending its next request as soon as the previous one answered.
Open loop: arrivals on a clock at a target rate, each request timed from its scheduled
arrival, however late the client got to send it (no coordinated omission).
The main process only coordinates: it sends every worker the same start instant, scrapes the
server's /metrics at the window's edges and merges the workers' records.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc

from imgclf.client.bench import scrape
from imgclf.client.bench.http_wire import HttpPool
from imgclf.client.bench.stats import CLIENT_ERROR, OK, Records, arrival_times, merge, split_evenly
from imgclf.client.bench.wire import Connection

START_MARGIN_S = 0.5
"""Between sending a point to the workers and its start (their channels connect first)."""


@dataclass(frozen=True)
class Point:
    """One measurement: closed loop at `concurrency` or open loop at `rate` requests/s."""

    kind: str  # "closed" | "open"
    warmup: float
    duration: float
    concurrency: int = 0
    rate: float = 0.0
    arrival: str = "constant"
    seed: int = 0
    max_inflight: int = 1000
    """Open loop, per client process: beyond this many requests in flight, arrivals wait
    (their latency still counts from their scheduled time)."""
    # filled in per worker
    t0: float = 0.0
    process: int = 0
    processes: int = 1
    first_client: int = 0
    clients_total: int = 0

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.kind == "closed" else f"r={self.rate:g}/s"


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _cpu_seconds(start: float, end: float) -> float:
    await _sleep_until(start)
    c0 = time.process_time()  # every thread of this process (gRPC's own included)
    await _sleep_until(end)
    return time.process_time() - c0


async def run_point(
    connection: Connection, method: str, payloads: list[bytes], timeout: float, p: Point
) -> Records:
    """One worker's share of a point, on the running event loop."""
    n = len(payloads)
    ws, we = p.t0 + p.warmup, p.t0 + p.warmup + p.duration
    sched: list[float] = []
    sent: list[float] = []
    end: list[float] = []
    code: list[int] = []
    metadata = connection.metadata
    pool = HttpPool(connection.target) if connection.protocol == "http" else None
    channel = connection.aio_channel() if pool is None else None
    try:
        if channel is not None:
            call = channel.unary_unary(method)
            await asyncio.wait_for(channel.channel_ready(), timeout=30)

        async def send(payload: bytes) -> int:
            if pool is not None:
                return await pool.call(payload, timeout)
            await call(payload, timeout=timeout, metadata=metadata)
            return OK

        async def one(payload: bytes, due: float) -> None:
            t = time.monotonic()
            try:
                c = await send(payload)
            except grpc.aio.AioRpcError as exc:
                c = exc.code().value[0]
            except Exception:
                c = CLIENT_ERROR
            sched.append(due)
            sent.append(t)
            end.append(time.monotonic())
            code.append(c)

        cpu = asyncio.ensure_future(_cpu_seconds(ws, we))
        await _sleep_until(p.t0)
        if p.kind == "closed":
            stride = max(1, p.clients_total)  # client i sends payloads i, i+C, i+2C, ...

            async def client(index: int) -> None:
                i = index
                while time.monotonic() < we:
                    await one(payloads[i % n], time.monotonic())
                    i += stride

            await asyncio.gather(*(client(p.first_client + j) for j in range(p.concurrency)))
        else:
            times = arrival_times(p.rate, p.t0, we, p.process, p.processes, p.arrival, p.seed)
            slots = asyncio.Semaphore(p.max_inflight)
            tasks = set()
            for k, due in enumerate(times):
                await _sleep_until(float(due))
                await slots.acquire()
                task = asyncio.ensure_future(one(payloads[(k * p.processes + p.process) % n], due))
                task.add_done_callback(lambda _t: slots.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*list(tasks))
        cpu_s = await cpu
    finally:
        if channel is not None:
            await channel.close()
        if pool is not None:
            await pool.close()
    return Records.from_lists(sched, sent, end, code, cpu_s)


def worker_main(
    pipe: mp.connection.Connection, connection: Connection, method: str,
    payloads: list[bytes], timeout: float,
) -> None:  # fmt: skip
    """A client process: one event loop for its whole life, one point per command."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            point = pipe.recv()
            if point is None:
                return
            try:
                records = loop.run_until_complete(
                    run_point(connection, method, payloads, timeout, point)
                )
                pipe.send(("ok", records))
            except Exception as exc:
                pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        loop.close()


@dataclass
class PointResult:
    point: Point
    records: Records
    window: tuple[float, float]
    server: dict[str, object]


class LoadRunner:
    """`processes` spawned client processes, kept for every point of a run."""

    def __init__(
        self, connection: Connection, method: str, payloads: list[bytes], processes: int,
        timeout: float,
    ) -> None:  # fmt: skip
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(child, connection, method, payloads, timeout),
                daemon=True,
            )  # fmt: skip
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def __enter__(self) -> LoadRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self, point: Point, metrics_url: str | None, model: str,
        cpu_seconds: Callable[[], float | None] | None = None,
    ) -> PointResult:  # fmt: skip
        """Run one point; scrape `metrics_url` (the server's stage breakdown) at the window's
        edges, or read `cpu_seconds` there (a server without metrics: its CPU use)."""
        procs = len(self.procs)
        t0 = time.monotonic() + START_MARGIN_S
        shares = split_evenly(point.concurrency, procs)
        for i, pipe in enumerate(self.pipes):
            pipe.send(replace(point, t0=t0, process=i, processes=procs,
                              concurrency=shares[i], first_client=sum(shares[:i]),
                              clients_total=point.concurrency))  # fmt: skip
        ws, we = t0 + point.warmup, t0 + point.warmup + point.duration
        probe: Callable[[], object] | None = None
        if metrics_url:
            probe = functools.partial(try_fetch, metrics_url)
        elif cpu_seconds is not None:
            probe = cpu_seconds
        before = after = None
        wall = 0.0
        if probe is not None:  # read at the window's edges, while the clients run
            time.sleep(max(0.0, ws - time.monotonic()))
            before, t_before = probe(), time.monotonic()
            time.sleep(max(0.0, we - time.monotonic()))
            after, wall = probe(), time.monotonic() - t_before
        parts = []
        errors = []
        for pipe in self.pipes:
            status, payload = pipe.recv()
            (parts if status == "ok" else errors).append(payload)
        if errors:
            raise RuntimeError(f"client process failed: {errors[0]}")
        server: dict[str, object] = {}
        if isinstance(before, float) and isinstance(after, float):  # CPU seconds
            server = {"server_cpu_cores": (after - before) / wall}
        elif before is not None and after is not None:
            server = scrape.breakdown(before, after, model, wall)  # type: ignore[arg-type]
        return PointResult(point, merge(parts), (ws, we), server)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def try_fetch(url: str) -> scrape.Samples | None:
    try:
        return scrape.fetch(url)
    except (OSError, ValueError):
        return None
