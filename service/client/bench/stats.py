"""The numbers of a benchmark: per-request records, merging, percentiles, open-loop schedules.

Pure functions on numpy arrays, no I/O, so every rule here is unit-tested:
- a request's latency runs from its *scheduled* time (open loop: the clock's arrival time, not
  the moment the client got round to sending it, so a slow server cannot hide behind a
  generator that waited for it: no coordinated omission) to its completion;
- throughput counts the successful requests that *completed* inside the measurement window;
- latency percentiles and error counts cover the requests *scheduled* inside the window.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

OK = 0
CLIENT_ERROR = -1
"""Code of a request that failed in the client itself (not a gRPC status)."""
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
CODE_NAMES[CLIENT_ERROR] = "CLIENT_ERROR"


def code_name(code: int) -> str:
    return CODE_NAMES.get(int(code), f"CODE_{int(code)}")


def percentile(values: np.ndarray | list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of the values at or below
    it (q=0: the minimum, q=100: the maximum). NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    arr = np.sort(np.asarray(values, dtype=np.float64))
    if arr.size == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * arr.size))
    return float(arr[rank - 1])


@dataclass
class Records:
    """One row per request, times in seconds on time.monotonic() (a system-wide clock on
    Linux and macOS, so records of several client processes line up)."""

    scheduled: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """When the request was due: its send time (closed loop) or its arrival (open loop)."""
    sent: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """When the client really sent it (>= scheduled)."""
    end: np.ndarray = field(default_factory=lambda: np.zeros(0))
    code: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    """0 OK, a gRPC status code value, or CLIENT_ERROR."""
    cpu_s: float = 0.0
    """CPU seconds the client process(es) used during the measurement window."""

    @classmethod
    def from_lists(
        cls, scheduled: list[float], sent: list[float], end: list[float], code: list[int],
        cpu_s: float = 0.0,
    ) -> Records:  # fmt: skip
        return cls(
            np.asarray(scheduled, dtype=np.float64),
            np.asarray(sent, dtype=np.float64),
            np.asarray(end, dtype=np.float64),
            np.asarray(code, dtype=np.int16),
            cpu_s,
        )

    def __len__(self) -> int:
        return int(self.scheduled.size)


def merge(parts: list[Records]) -> Records:
    """The records of several client processes as one run (ordered by scheduled time)."""
    if not parts:
        return Records()
    scheduled = np.concatenate([p.scheduled for p in parts])
    order = np.argsort(scheduled, kind="stable")
    return Records(
        scheduled[order],
        np.concatenate([p.sent for p in parts])[order],
        np.concatenate([p.end for p in parts])[order],
        np.concatenate([p.code for p in parts]).astype(np.int16)[order],
        sum(p.cpu_s for p in parts),
    )


@dataclass(frozen=True)
class Summary:
    requests: int
    """Requests scheduled in the window."""
    ok: int
    throughput_rps: float
    throughput_ips: float
    latency_ms: dict[str, float]
    """p50, p90, p99, mean, max of the successful requests scheduled in the window."""
    errors: dict[str, int]
    """Failed requests scheduled in the window, by status name."""
    send_lag_p99_ms: float
    """How late the client sent its requests (open loop: > a few ms means it fell behind)."""
    client_cpu_cores: float

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "throughput_rps": self.throughput_rps,
            "throughput_ips": self.throughput_ips,
            "latency_ms": self.latency_ms,
            "errors": self.errors,
            "send_lag_p99_ms": self.send_lag_p99_ms,
            "client_cpu_cores": self.client_cpu_cores,
        }


def summarise(
    records: Records, window_start: float, window_end: float, images_per_request: int = 1
) -> Summary:
    """Throughput, latency percentiles and errors of the window [window_start, window_end)."""
    span = window_end - window_start
    if span <= 0:
        raise ValueError("the measurement window is empty")
    r = records
    scheduled_in = (r.scheduled >= window_start) & (r.scheduled < window_end)
    ok = r.code == OK
    completed_in = ok & (r.end >= window_start) & (r.end < window_end)
    latencies = (r.end - r.scheduled)[scheduled_in & ok] * 1e3
    lag = (r.sent - r.scheduled)[scheduled_in] * 1e3
    rps = float(completed_in.sum()) / span
    latency = {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)}
    latency["mean"] = float(latencies.mean()) if latencies.size else math.nan
    latency["max"] = float(latencies.max()) if latencies.size else math.nan
    errors = Counter(code_name(c) for c in r.code[scheduled_in & ~ok])
    return Summary(
        requests=int(scheduled_in.sum()),
        ok=int((scheduled_in & ok).sum()),
        throughput_rps=rps,
        throughput_ips=rps * images_per_request,
        latency_ms=latency,
        errors=dict(sorted(errors.items())),
        send_lag_p99_ms=percentile(lag, 99) if lag.size else 0.0,
        client_cpu_cores=r.cpu_s / span,
    )


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` clients over `parts` processes, the first ones taking the remainder."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def arrival_times(
    rate: float,
    start: float,
    end: float,
    process: int = 0,
    processes: int = 1,
    kind: str = "constant",
    seed: int = 0,
) -> np.ndarray:
    """The open-loop arrivals in [start, end) that client process `process` of `processes`
    sends, for a total rate of `rate` requests/s.

    constant: the union over the processes is exactly one arrival every 1/rate s from
    `start` (process i takes arrivals i, i+P, i+2P, ...). poisson: each process draws its own
    Poisson process of rate rate/P (seeded by seed and its index); their union is a Poisson
    process of rate `rate`.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if not 0 <= process < processes:
        raise ValueError(f"process {process} is not in [0, {processes})")
    span = end - start
    if span <= 0:
        return np.zeros(0)
    if kind == "constant":
        count = math.ceil(span * rate)
        idx = np.arange(process, count, processes, dtype=np.float64)
        times = start + idx / rate
    elif kind == "poisson":
        rng = np.random.default_rng([seed, process])
        own = rate / processes
        n = max(16, math.ceil(span * own + 6 * math.sqrt(span * own) + 16))
        times = start + np.cumsum(rng.exponential(1.0 / own, size=n))
        while times[-1] < end:  # pragma: no cover - n is sized to make this vanishingly rare
            more = times[-1] + np.cumsum(rng.exponential(1.0 / own, size=n))
            times = np.concatenate([times, more])
    else:
        raise ValueError(f"arrival kind must be constant or poisson, got {kind!r}")
    return times[times < end]


def median(values: list[float | None]) -> float | None:
    """The median of the values that are not None/NaN (None when there are none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(vals)) if vals else None


def combine_points(rounds: list[dict]) -> dict:
    """One load point measured in several rounds, as one: medians of throughput, latency and
    the comparison with the limit; errors and request counts summed; the server breakdown of
    the round of median throughput; each round's headline numbers under "rounds"."""
    if len(rounds) == 1:
        return rounds[0]
    by_throughput = sorted(rounds, key=lambda p: p["summary"]["throughput_ips"])
    out = dict(by_throughput[(len(rounds) - 1) // 2])
    sums = [p["summary"] for p in rounds]
    errors: Counter[str] = Counter()
    for s in sums:
        errors.update(s["errors"])
    out["summary"] = {
        **{k: median([s[k] for s in sums]) for k in
           ("throughput_rps", "throughput_ips", "send_lag_p99_ms", "client_cpu_cores")},
        "requests": sum(s["requests"] for s in sums),
        "ok": sum(s["ok"] for s in sums),
        "latency_ms": {k: median([s["latency_ms"][k] for s in sums])
                       for k in sums[0]["latency_ms"]},
        "errors": dict(sorted(errors.items())),
    }  # fmt: skip
    out["vs_limit"] = {k: median([p["vs_limit"][k] for p in rounds]) for k in rounds[0]["vs_limit"]}
    if all("floor" in p for p in rounds):
        out["floor"] = {
            k: median([p["floor"][k] for p in rounds])
            if all(p["floor"][k] is not None for p in rounds) else None
            for k in rounds[0]["floor"]
        }  # fmt: skip
    out["rounds"] = [
        {"throughput_ips": p["summary"]["throughput_ips"],
         "p50_ms": p["summary"]["latency_ms"]["p50"], **p["vs_limit"]}
        for p in rounds
    ]  # fmt: skip
    return out
