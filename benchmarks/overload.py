"""Overload: drive a real server at several times its capacity, then drop to light load.

    python -m benchmarks.overload --duration 20            # starts a server on models/
    python -m benchmarks.overload --target 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics

Phases, one after the other, each bounded:
  baseline  one client, closed loop: the latency of an idle server;
  capacity  `--capacity-concurrency` clients, closed loop: what the server completes per second;
  overload  open loop at `--factor` x capacity over `--clients` connections for `--duration`:
            accepted and refused counts, the refusal code (must be RESOURCE_EXHAUSTED, and fast:
            refusal latency percentiles) and its retry hint, accepted latency percentiles;
  deadline  the same open loop with short client deadlines (`--short-deadline-ms`; 500 for
            the deadline-overload scenario): goodput (answers in time per second, against
            capacity), the refusals and how fast they come, DEADLINE_EXCEEDED, and what the
            server counted for the phase next to what the clients saw;
  recovery  one client again: latency must be back to the baseline at once.
Then the server's own counters (requests by code, failures by reason, queue depth, in-flight).

Exit status 0 when every check holds (only OK or RESOURCE_EXHAUSTED under overload, some
refused, refusals fast: p90 within max(2 x baseline p99, 100 ms), every accepted answer carries
the baseline's label, recovery at baseline latency, the queue empty at the end; with
`--min-goodput`, the deadline phase's goodput at least that fraction of capacity and the
server's DEADLINE_EXCEEDED/CANCELLED counts those the clients saw), 1 otherwise.

    python -m benchmarks.overload --duration 20 --short-deadline-ms 500 --min-goodput 0.8
Traffic goes to 127.0.0.1 unless --target says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import (
    Outcome,
    add_server_arguments,
    channels,
    classify,
    finish,
    fmt_ms,
    image_bytes,
    percentiles_ms,
)
from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client.bench.launcher import Target, server_or_target
from imgclf.client.bench.scrape import by_label, fetch, total

DEFAULT_SERVER_ARGS = "--max-queue-size 16"
OVERLOAD_CODES = {"OK", "RESOURCE_EXHAUSTED"}
DEADLINE_CODES = {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


@dataclass
class Phase:
    name: str
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    offered_rps: float = 0.0
    """Open loop: the arrival rate asked for (0 for closed loops)."""
    sent_rps: float = 0.0
    """Requests actually started per second."""

    def codes(self) -> Counter[str]:
        return Counter(o.code for o in self.outcomes)

    def latencies(self, code: str = "OK") -> list[float]:
        return [o.seconds for o in self.outcomes if o.code == code]

    def completed_rps(self) -> float:
        return self.codes()["OK"] / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {
            "seconds": round(self.seconds, 2),
            "offered_rps": round(self.offered_rps, 1),
            "sent_rps": round(self.sent_rps, 1),
            "codes": dict(self.codes()),
            "ok_latency_ms": percentiles_ms(self.latencies("OK")),
            "refusal_latency_ms": percentiles_ms(self.latencies("RESOURCE_EXHAUSTED")),
        }


@dataclass
class Report:
    target: str
    model: str
    expected_label: str
    baseline: Phase
    capacity: Phase
    overload: Phase
    deadline: Phase
    recovery: Phase
    short_deadline_ms: float
    server: dict = field(default_factory=dict)
    deadline_server: dict = field(default_factory=dict)
    """The server's requests by code during the deadline phase alone."""
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        phases = ("baseline", "capacity", "overload", "deadline", "recovery")
        out = {k: v for k, v in asdict(self).items() if k not in phases}
        out.update({name: getattr(self, name).summary() for name in phases})
        out["capacity_rps"] = round(self.capacity.completed_rps(), 1)
        out["deadline_goodput"] = round(self.goodput(), 3)
        return out

    def goodput(self) -> float:
        """Deadline phase: answers in time per second (a late answer is DEADLINE_EXCEEDED at
        the client), as a fraction of capacity."""
        capacity = self.capacity.completed_rps()
        return self.deadline.completed_rps() / capacity if capacity else 0.0


# --- load shapes ---------------------------------------------------------------------------


async def closed_loop(
    stubs: list[pb_grpc.ImageClassifierStub],
    request: pb.ClassifyRequest,
    concurrency: int,
    seconds: float,
    timeout: float,
    name: str,
) -> Phase:
    """`concurrency` clients, each sending its next request when the last one is answered."""
    started = time.monotonic()
    stop = started + seconds

    async def client(i: int) -> list[Outcome]:
        out = []
        while time.monotonic() < stop:
            out.append(await classify(stubs[i % len(stubs)], request, timeout))
        return out

    results = await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    outcomes = [o for r in results for o in r]
    return Phase(name, elapsed, outcomes, sent_rps=len(outcomes) / elapsed)


async def open_loop(
    stubs: list[pb_grpc.ImageClassifierStub],
    request: pb.ClassifyRequest,
    rate: float,
    seconds: float,
    timeout: float,
    name: str,
    max_outstanding: int = 4096,
) -> Phase:
    """Requests start at `rate` per second whatever the server does (as independent users
    would), spread over the connections; every one is awaited before returning."""
    outcomes: list[Outcome] = []
    pending: set[asyncio.Task[Outcome]] = set()

    def done(task: asyncio.Task[Outcome]) -> None:
        pending.discard(task)
        if not task.cancelled():
            outcomes.append(task.result())

    started = time.monotonic()
    sent = 0
    while (due := started + sent / rate) < started + seconds:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) < max_outstanding:
            task = asyncio.ensure_future(classify(stubs[sent % len(stubs)], request, timeout))
            pending.add(task)
            task.add_done_callback(done)
        sent += 1
    sending = time.monotonic() - started
    while pending:
        await asyncio.gather(*list(pending))
    return Phase(
        name, time.monotonic() - started, outcomes, offered_rps=rate, sent_rps=sent / sending
    )


# --- the run -------------------------------------------------------------------------------


def server_counters(metrics_url: str, model: str) -> dict:
    if not metrics_url:
        return {}
    s = fetch(metrics_url)
    return {
        "requests_by_code": by_label(s, "imgclf_requests_total", "code", model=model),
        "failures_by_reason": by_label(s, "imgclf_request_failures_total", "reason"),
        "queue_depth": total(s, "imgclf_queue_depth", model=model),
        "inflight": total(s, "imgclf_inflight_requests"),
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0.0)) for k, v in after.items() if v != before.get(k, 0.0)}


async def settle(metrics_url: str, model: str, timeout: float = 10.0) -> dict:
    """The server's counters once its queue is empty and nothing is in flight (bounded)."""
    until = time.monotonic() + timeout
    while True:
        now = server_counters(metrics_url, model)
        if not now or (now["queue_depth"] == 0 and now["inflight"] == 0):
            return now
        if time.monotonic() > until:
            return now
        await asyncio.sleep(0.1)


async def run(
    target: Target,
    request: pb.ClassifyRequest,
    duration: float = 20.0,
    factor: float = 4.0,
    clients: int = 32,
    capacity_concurrency: int = 16,
    short_deadline_ms: float = 0.0,
    timeout: float = 30.0,
    check_latency: bool = True,
    min_goodput: float = 0.0,
    light_seconds: float = 0.0,
    log: Callable[[str], None] = print,
) -> Report:
    """Every phase against `target`; the Report says what was measured and what failed.
    The light phases (baseline, capacity, recovery) last `light_seconds` (0: a fifth of
    `duration`, at least 1 s); the deadline phase half of `duration`."""
    light = light_seconds or max(1.0, duration / 5)
    conns = channels(target.address, clients)
    stubs = [pb_grpc.ImageClassifierStub(c) for c in conns]
    try:
        await closed_loop(stubs, request, 1, min(1.0, light), timeout, "warmup")  # not kept
        before = server_counters(target.metrics_url, request.model)
        baseline = await closed_loop(stubs, request, 1, light, timeout, "baseline")
        labels = Counter(o.label for o in baseline.outcomes if o.code == "OK")
        expected = labels.most_common(1)[0][0] if labels else ""
        log(
            f"baseline   1 client, {baseline.seconds:.1f} s: {len(baseline.outcomes)} requests "
            f"{dict(baseline.codes())}, latency p50/p90/p99 "
            f"{fmt_ms(percentiles_ms(baseline.latencies()))}, label {expected!r}"
        )
        capacity = await closed_loop(
            stubs, request, capacity_concurrency, light, timeout, "capacity"
        )
        rate = max(1.0, capacity.completed_rps()) * factor
        log(
            f"capacity   {capacity_concurrency} clients, {capacity.seconds:.1f} s: "
            f"{capacity.completed_rps():.1f} req/s {dict(capacity.codes())}"
        )
        overload = await open_loop(stubs, request, rate, duration, timeout, "overload")
        refused = overload.latencies("RESOURCE_EXHAUSTED")
        hints = [o for o in overload.outcomes if o.code == "RESOURCE_EXHAUSTED"]
        log(
            f"overload   open loop {rate:.1f} req/s offered ({factor:g}x capacity), "
            f"{overload.sent_rps:.1f} sent, {clients} connections, {duration:.1f} s: "
            f"{len(overload.outcomes)} requests, accepted {overload.codes()['OK']}, refused "
            f"{len(refused)} {dict(overload.codes())}"
        )
        log(
            "           accepted latency p50/p90/p99 "
            f"{fmt_ms(percentiles_ms(overload.latencies()))}; "
            f"refusal latency p50/p90/p99 {fmt_ms(percentiles_ms(refused))}"
        )
        said_retry = sum("retry" in o.message.lower() for o in hints)
        with_metadata = sum(bool(o.hint) for o in hints)
        example = hints[0].message if hints else "-"
        log(
            f"           retry hint: message mentions retry in {said_retry}/{len(hints)}, "
            f"trailing metadata hint in {with_metadata}/{len(hints)} (e.g. {example!r})"
        )
        base_p99 = percentiles_ms(baseline.latencies()).get("p99", 10.0)
        deadline_ms = short_deadline_ms or max(20.0, 3 * base_p99)
        phase_before = await settle(target.metrics_url, request.model)
        deadline = await open_loop(
            stubs, request, rate, max(light, duration / 2), deadline_ms / 1000.0, "deadline"
        )
        phase_after = await settle(target.metrics_url, request.model)
        capacity_rps = capacity.completed_rps()
        log(
            f"deadline   open loop {rate:.1f} req/s, client deadline {deadline_ms:.0f} ms, "
            f"{deadline.seconds:.1f} s: {dict(deadline.codes())}; goodput "
            f"{deadline.completed_rps():.1f} req/s in time = "
            f"{deadline.completed_rps() / max(capacity_rps, 1e-9):.0%} of capacity"
        )
        log(
            "           OK latency p50/p90/p99 "
            f"{fmt_ms(percentiles_ms(deadline.latencies()))}; refusal latency p50/p90/p99 "
            f"{fmt_ms(percentiles_ms(deadline.latencies('RESOURCE_EXHAUSTED')))}"
        )
        deadline_server = {}
        if phase_after:
            deadline_server = delta(
                phase_after["requests_by_code"], phase_before["requests_by_code"]
            )
            log(f"           server counted {deadline_server}")
        recovery = await closed_loop(stubs, request, 1, light, timeout, "recovery")
        first = [round(o.seconds * 1000, 1) for o in recovery.outcomes[:5]]
        log(
            f"recovery   1 client, {recovery.seconds:.1f} s: {dict(recovery.codes())}, latency "
            f"p50/p90/p99 {fmt_ms(percentiles_ms(recovery.latencies()))} (baseline "
            f"{fmt_ms(percentiles_ms(baseline.latencies()))}); first 5: {first} ms"
        )
        after = await settle(target.metrics_url, request.model)
        report = Report(
            target.address,
            request.model,
            expected,
            baseline,
            capacity,
            overload,
            deadline,
            recovery,
            deadline_ms,
            deadline_server=deadline_server,
        )
        if after:
            report.server = {
                "requests_by_code": delta(after["requests_by_code"], before["requests_by_code"]),
                "failures_by_reason": delta(
                    after["failures_by_reason"], before["failures_by_reason"]
                ),
                "queue_depth_at_end": after["queue_depth"],
                "inflight_at_end": after["inflight"],
            }
            log(
                f"server     requests by code {report.server['requests_by_code']}, failures by "
                f"reason {report.server['failures_by_reason']}, queue depth at end "
                f"{after['queue_depth']:g}, in flight {after['inflight']:g}"
            )
    finally:
        for c in conns:
            await c.close()
    report.failures = checks(report, check_latency, min_goodput)
    return report


def checks(report: Report, check_latency: bool, min_goodput: float = 0.0) -> list[str]:
    failures = []
    if min_goodput:
        if report.goodput() < min_goodput:
            failures.append(
                f"deadline: goodput {report.goodput():.0%} of capacity, under {min_goodput:.0%}"
            )
        seen = report.deadline.codes()
        counted = report.deadline_server
        for code in ("DEADLINE_EXCEEDED", "CANCELLED"):
            # The server counts what the clients saw (a few may straddle the phase's edges).
            if counted and abs(counted.get(code, 0) - seen[code]) > max(5, 0.05 * seen[code]):
                failures.append(
                    f"deadline: the server counted {counted.get(code, 0)} {code}, the clients "
                    f"saw {seen[code]}"
                )
    unexpected = {c: n for c, n in report.overload.codes().items() if c not in OVERLOAD_CODES}
    if unexpected:
        failures.append(f"overload: codes other than OK/RESOURCE_EXHAUSTED: {unexpected}")
    if not report.overload.codes()["RESOURCE_EXHAUSTED"]:
        failures.append("overload: nothing was refused (not overloaded? raise --factor)")
    unexpected = {c: n for c, n in report.deadline.codes().items() if c not in DEADLINE_CODES}
    if unexpected:
        failures.append(f"deadline: unexpected codes {unexpected}")
    if set(report.recovery.codes()) != {"OK"}:
        failures.append(f"recovery: not every request succeeded: {dict(report.recovery.codes())}")
    phases = (report.baseline, report.capacity, report.overload, report.deadline, report.recovery)
    wrong = Counter(
        o.label
        for p in phases
        for o in p.outcomes
        if o.code == "OK" and o.label != report.expected_label
    )
    if wrong or not report.expected_label:
        failures.append(f"answers other than {report.expected_label!r}: {dict(wrong)}")
    if check_latency:
        base = percentiles_ms(report.baseline.latencies())
        rec = percentiles_ms(report.recovery.latencies()).get("p50", float("inf"))
        if rec > 2 * base.get("p50", 0.0) + 5.0:
            failures.append(f"recovery: p50 {rec:.1f} ms, baseline {base.get('p50', 0):.1f} ms")
        refusal = percentiles_ms(report.overload.latencies("RESOURCE_EXHAUSTED")).get("p90", 0)
        bound = max(2 * base.get("p99", 0.0), 100.0)
        if refusal > bound:
            failures.append(
                f"overload: refusals are slow: p90 {refusal:.0f} ms, over max(2 x baseline p99, "
                f"100 ms) = {bound:.0f} ms (the refusal waited behind work)"
            )
    if report.server and (report.server["queue_depth_at_end"] or report.server["inflight_at_end"]):
        failures.append(f"server: queue or in-flight not back to 0: {report.server}")
    return failures


# --- command line --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.overload", description=__doc__.split("\n\n")[0]
    )
    add_server_arguments(p, DEFAULT_SERVER_ARGS)
    p.add_argument("--metrics-url", default="", help="its /metrics URL (with --target)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image", default="photo", help="a file to send, or 'photo' / 'red' (built in)")
    p.add_argument("--duration", type=float, default=20.0, help="overload phase, seconds")
    p.add_argument("--factor", type=float, default=4.0, help="offered load / capacity")
    p.add_argument("--clients", type=int, default=32, help="connections the load spreads over")
    p.add_argument("--capacity-concurrency", type=int, default=16)
    p.add_argument(
        "--short-deadline-ms",
        type=float,
        default=0.0,
        help="client deadline of the deadline phase (0: 3x baseline p99, >= 20)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="client deadline otherwise, s")
    p.add_argument(
        "--min-goodput",
        type=float,
        default=0.0,
        help="check: deadline-phase answers in time per second / capacity (e.g. 0.8)",
    )
    p.add_argument("--json", type=Path, help="also write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    image = image_bytes(args.image)
    request = pb.ClassifyRequest(model=args.model, images=[pb.Image(encoded=image)], top_k=1)
    with server_or_target(
        args.target, args.model_repository, args.server_args, args.metrics_url, say=print
    ) as target:
        print(f"overload against {target.address}, model {args.model}")
        report = asyncio.run(
            run(
                target,
                request,
                duration=args.duration,
                factor=args.factor,
                clients=args.clients,
                capacity_concurrency=args.capacity_concurrency,
                short_deadline_ms=args.short_deadline_ms,
                min_goodput=args.min_goodput,
                timeout=args.timeout,
            )
        )
    return finish("overload", report.failures, report.as_dict(), args.json)


if __name__ == "__main__":
    sys.exit(main())
