"""Soak: steady load on a real server for a while; nothing may fail and memory must not grow.

    python -m benchmarks.soak                       # 60 s on models/ (efficientnet_lite0)
    python -m benchmarks.soak --duration 1800       # 30 minutes
    python -m benchmarks.soak --model-repository /path/to/tiny/repo --model tiny --image red
    python -m benchmarks.soak --target 127.0.0.1:8001 --pid 12345   # a server already running

`--concurrency` clients in closed loop send a steady mix: mostly Classify with an encoded
image, every `--oip-every`-th request an Open Inference Protocol ModelInfer (BYTES input,
classification output), and every `--bad-every`-th a malformed image that must be refused with
INVALID_ARGUMENT (error paths leak too). The server's resident memory is read every
`--sample-every` seconds (/proc/<pid>/status, or process_resident_memory_bytes from /metrics);
its baseline is taken after `--warmup` seconds of the same load.

Prints throughput, latency, outcome counts and memory, and exits 1 if any request failed
unexpectedly (any code other than OK, or INVALID_ARGUMENT for the malformed ones, or a wrong
label) or if resident memory grew by more than `--max-rss-growth` percent over the baseline.
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

import numpy as np

from benchmarks import (
    Outcome,
    add_server_arguments,
    channels,
    classify,
    finish,
    image_bytes,
    percentiles_ms,
    rss_bytes,
    timed,
)
from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf._generated.inference import grpc_service_pb2 as oip_pb
from imgclf._generated.inference import grpc_service_pb2_grpc as oip_grpc
from imgclf.bytestensor import LENGTH, serialize_bytes_elements
from imgclf.client.bench.launcher import Target, server_or_target
from imgclf.client.bench.scrape import fetch, total

MIB = 1024 * 1024


@dataclass
class SoakReport:
    target: str
    model: str
    seconds: float
    requests: int
    throughput_rps: float
    outcomes: dict[str, int]
    """kind:code -> count (kinds: ours, oip, bad)."""
    errors: dict[str, int]
    latency_ms: dict[str, float]
    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start, resident MiB) samples."""
    rss_baseline_mib: float = 0.0
    rss_end_mib: float = 0.0
    rss_max_mib: float = 0.0
    rss_growth_pct: float = 0.0
    rss_slope_mib_per_min: float = 0.0
    max_rss_growth_pct: float = 20.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def oip_request(model: str, image: bytes) -> oip_pb.ModelInferRequest:
    request = oip_pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(serialize_bytes_elements([image]))
    out = request.outputs.add(name="probabilities")
    out.parameters["classification"].int64_param = 1
    return request


def classification_label(reply: oip_pb.ModelInferResponse) -> str:
    """The label of the first "score:index:label" element of a classification output."""
    raw = reply.raw_output_contents[0]
    (size,) = LENGTH.unpack_from(raw, 0)
    return raw[LENGTH.size : LENGTH.size + size].decode().split(":", 2)[2]


async def infer(
    stub: oip_grpc.GRPCInferenceServiceStub, request: oip_pb.ModelInferRequest, timeout: float
) -> Outcome:
    return await timed(stub.ModelInfer(request, timeout=timeout), classification_label)


class MemoryProbe:
    """Resident memory of the server: /proc when we know its pid, else its /metrics."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def mib(self) -> float:
        if self.target.pid is not None:
            return rss_bytes(self.target.pid) / MIB
        if self.target.metrics_url:
            samples = fetch(self.target.metrics_url)
            return total(samples, "process_resident_memory_bytes") / MIB
        raise SystemExit("memory: give --pid or --metrics-url with --target")


async def soak(
    target: Target,
    model: str,
    image: bytes,
    duration: float = 60.0,
    warmup: float = 10.0,
    concurrency: int = 4,
    oip_every: int = 10,
    bad_every: int = 20,
    sample_every: float = 5.0,
    max_rss_growth_pct: float = 20.0,
    timeout: float = 30.0,
    log: Callable[[str], None] = print,
) -> SoakReport:
    probe = MemoryProbe(target)
    conns = channels(target.address, concurrency)
    ours = [pb_grpc.ImageClassifierStub(c) for c in conns]
    oip = [oip_grpc.GRPCInferenceServiceStub(c) for c in conns]
    good = pb.ClassifyRequest(model=model, images=[pb.Image(encoded=image)], top_k=1)
    bad = pb.ClassifyRequest(model=model, images=[pb.Image(encoded=image[: len(image) // 3])])
    oip_good = oip_request(model, image)
    # The expected label: what the idle server answers.
    first = await classify(ours[0], good, timeout)
    if first.code != "OK":
        raise SystemExit(f"the first request failed: {first}")
    expected = first.label
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    stop = started + warmup + duration
    measuring = started + warmup
    counter = 0

    async def client(i: int) -> None:
        nonlocal counter
        while time.monotonic() < stop:
            counter += 1
            n = counter
            if bad_every and n % bad_every == 0:
                kind, outcome = "bad", await classify(ours[i], bad, timeout)
                wanted = outcome.code == "INVALID_ARGUMENT"
            elif oip_every and n % oip_every == 0:
                kind, outcome = "oip", await infer(oip[i], oip_good, timeout)
                wanted = outcome.code == "OK" and outcome.label == expected
            else:
                kind, outcome = "ours", await classify(ours[i], good, timeout)
                wanted = outcome.code == "OK" and outcome.label == expected
            if time.monotonic() < measuring:
                continue
            outcomes[f"{kind}:{outcome.code}"] += 1
            if outcome.code == "OK":
                latencies.append(outcome.seconds)
            if not wanted:
                key = f"{kind}:{outcome.code}:{outcome.label or outcome.message[:60]}"
                errors[key] += 1

    async def sampler() -> None:
        next_log = measuring
        while time.monotonic() < stop:
            now = time.monotonic()
            if now >= measuring:
                samples.append((round(now - measuring, 1), round(probe.mib(), 1)))
                if now >= next_log:
                    done = sum(outcomes.values())
                    rate = done / max(now - measuring, 1e-9)
                    log(
                        f"  {now - measuring:6.0f} s  {done:7d} requests  {rate:7.1f} req/s  "
                        f"RSS {samples[-1][1]:.1f} MiB  errors {sum(errors.values())}"
                    )
                    next_log += max(sample_every, duration / 10)
            await asyncio.sleep(min(sample_every, max(0.0, stop - time.monotonic())))

    log(
        f"soak: {concurrency} clients for {warmup:.0f} s warm-up + {duration:.0f} s, model "
        f"{model}, label {expected!r}; RSS at start {probe.mib():.1f} MiB"
    )
    try:
        await asyncio.gather(sampler(), *(client(i) for i in range(concurrency)))
    finally:
        for c in conns:
            await c.close()
    elapsed = time.monotonic() - measuring
    samples.append((round(elapsed, 1), round(probe.mib(), 1)))
    requests = sum(outcomes.values())
    report = SoakReport(
        target.address,
        model,
        round(elapsed, 1),
        requests,
        round(requests / elapsed, 1),
        dict(outcomes),
        dict(errors),
        percentiles_ms(latencies),
        samples,
        max_rss_growth_pct=max_rss_growth_pct,
    )
    rss = [m for _, m in samples]
    report.rss_baseline_mib, report.rss_end_mib, report.rss_max_mib = rss[0], rss[-1], max(rss)
    report.rss_growth_pct = round(100.0 * (rss[-1] - rss[0]) / rss[0], 1)
    if len(samples) >= 2:
        t = np.array([s for s, _ in samples]) / 60.0
        report.rss_slope_mib_per_min = round(float(np.polyfit(t, np.array(rss), 1)[0]), 2)
    if errors:
        report.failures.append(f"{sum(errors.values())} unexpected outcomes: {dict(errors)}")
    if report.rss_growth_pct > max_rss_growth_pct:
        report.failures.append(
            f"resident memory grew {report.rss_growth_pct}% ({rss[0]:.1f} -> {rss[-1]:.1f} MiB), "
            f"over the bound of {max_rss_growth_pct}%"
        )
    if requests == 0:
        report.failures.append("no request completed")
    return report


def print_report(r: SoakReport) -> None:
    print(f"served      {r.requests} requests in {r.seconds:.0f} s = {r.throughput_rps} req/s")
    print(f"outcomes    {r.outcomes}")
    print(f"errors      {sum(r.errors.values())} {r.errors or ''}")
    print(f"latency     OK p50/p90/p99 {' / '.join(f'{v:.1f}' for v in r.latency_ms.values())} ms")
    print(
        f"memory      RSS after warm-up {r.rss_baseline_mib:.1f} MiB, at end {r.rss_end_mib:.1f} "
        f"MiB, max {r.rss_max_mib:.1f} MiB: {r.rss_growth_pct:+.1f}% (bound +"
        f"{r.max_rss_growth_pct:g}%), trend {r.rss_slope_mib_per_min:+.2f} MiB/min"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0]
    )
    add_server_arguments(p)
    p.add_argument("--pid", type=int, help="its process id, for /proc/<pid>/status")
    p.add_argument("--metrics-url", default="", help="its /metrics URL (memory without --pid)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image", default="photo", help="a file to send, or 'photo' / 'red' (built in)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before the baseline")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--oip-every", type=int, default=10, help="every Nth request via OIP (0: none)")
    p.add_argument("--bad-every", type=int, default=20, help="every Nth malformed (0: none)")
    p.add_argument("--sample-every", type=float, default=5.0, help="memory sampling, s")
    p.add_argument("--max-rss-growth", type=float, default=20.0, help="percent, after warm-up")
    p.add_argument("--json", type=Path, help="also write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    image = image_bytes(args.image)
    with server_or_target(
        args.target, args.model_repository, args.server_args, args.metrics_url, args.pid, print
    ) as target:
        report = asyncio.run(
            soak(
                target,
                args.model,
                image,
                duration=args.duration,
                warmup=args.warmup,
                concurrency=args.concurrency,
                oip_every=args.oip_every,
                bad_every=args.bad_every,
                sample_every=args.sample_every,
                max_rss_growth_pct=args.max_rss_growth,
            )
        )
    print_report(report)
    return finish("soak", report.failures, asdict(report), args.json)


if __name__ == "__main__":
    sys.exit(main())
