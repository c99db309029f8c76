"""The machine's own limit: the same work as the server, with no server, in a tight loop.

On the SAME inputs and the SAME ONNX file with the SAME execution provider (CPU, with the
server's session options: full graph optimisation, one inter-op thread), each iteration does
what the server must do for a request: decode + preprocess (`imgclf.imaging.preprocess_bytes`,
JPEG input only, with the server's JPEG draft decoding unless told otherwise; for uint8
pixels sent to a float model, the normalisation) and one ONNX Runtime run. Every
configuration runs in freshly spawned processes, started together behind a barrier, nothing
else of ours running:

  a       one process per core, each a 1-thread session, spinning off, looping on its own;
  b       one process, one session with one intra-op thread per core, spinning off;
  b+spin  the same with ONNX Runtime's worker threads spinning;

each at every batch size asked for (1, and 4 by default: the server batches too). The limit is
the best images/s of them all; the latency limit is the p50 of one single-image call in the
best one-process configuration (b or b+spin, batch 1): one image, nothing else running.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.client.bench.stats import percentile
from imgclf.imaging import Preprocessing

WORKER_TIMEOUT_S = 300.0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LimitConfig:
    name: str
    processes: int
    threads: int
    """intra-op threads of each process's session"""
    spinning: bool
    batch: int

    def describe(self) -> str:
        spin = ", spinning" if self.spinning else ""
        return f"{self.processes} proc x {self.threads} thread{spin}, batch {self.batch}"


def limit_configs(cores: int, batches: list[int]) -> list[LimitConfig]:
    out = []
    for b in batches:
        a = LimitConfig(f"a/{b}", cores, 1, False, b)
        out += [a] if cores > 1 else []
        out += [
            LimitConfig(f"b/{b}", 1, cores, False, b),
            LimitConfig(f"b+spin/{b}", 1, cores, True, b),
        ]
    return out


@dataclass(frozen=True)
class Job:
    """What every process of one configuration runs (pickled to spawned processes)."""

    model_path: str
    items: list
    spec: Preprocessing
    cfg: LimitConfig
    warmup: float
    duration: float
    jpeg_draft: bool
    pixel_input: bool = False
    """The model takes uint8 HWC pixels (resized and cropped), normalised in its graph."""


def _worker(job: Job, barrier: threading.Barrier, results: mp.Queue, index: int) -> None:
    items, spec, cfg = job.items, job.spec, job.cfg
    try:
        import onnxruntime as ort

        from imgclf.imaging import normalize, pixels_from_bytes, preprocess_bytes
        from imgclf.runtime.options import ExecutionOptions, session_options

        options = ExecutionOptions(
            providers="cpu", intra_op_threads=cfg.threads, allow_spinning=cfg.spinning
        )
        sess = ort.InferenceSession(
            job.model_path, session_options(options), providers=["CPUExecutionProvider"]
        )
        input_name, output_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
        n, b = len(items), cfg.batch
        encoded = isinstance(items[0], bytes)
        stacked = [] if encoded else [
            np.stack([items[(s + j) % n] for j in range(b)]) for s in range(n)
        ]  # fmt: skip

        kw = {"jpeg_draft": True} if job.jpeg_draft else {}
        convert = pixels_from_bytes if job.pixel_input else preprocess_bytes
        # uint8 CHW pixels for a float model: the server normalises them, and so does this.
        normalise = not encoded and items[0].dtype == np.uint8 and not job.pixel_input

        def one(i: int) -> None:
            if encoded:
                batch = np.stack([convert(items[(i + j) % n], spec, **kw)
                                  for j in range(b)])  # fmt: skip
            elif normalise:
                batch = np.stack([normalize(items[(i + j) % n].transpose(1, 2, 0), spec)
                                  for j in range(b)])  # fmt: skip
            else:
                batch = stacked[i % n]
            sess.run([output_name], {input_name: batch})

        for i in range(2):
            one(i)
        barrier.wait(WORKER_TIMEOUT_S)
        t0 = time.monotonic()
        ws, we = t0 + job.warmup, t0 + job.warmup + job.duration
        latencies = []
        i = index * b
        first_start = last_end = 0.0
        cpu0 = cpu1 = 0.0
        while True:
            t = time.monotonic()
            if t >= we:
                break
            if t >= ws and not first_start:
                first_start, cpu0 = t, time.process_time()
            one(i)
            last_end = time.monotonic()
            i += b
            if first_start:
                latencies.append(last_end - t)
                cpu1 = time.process_time()  # every thread of this process
    except BaseException as exc:
        barrier.abort()
        results.put(("error", index, f"{type(exc).__name__}: {exc}"))
        return
    elapsed = last_end - first_start
    results.put(("ok", index, (len(latencies) * b, elapsed, latencies, cpu1 - cpu0)))


def measure(
    cfg: LimitConfig, model_path: Path, items: list, spec: Preprocessing, warmup: float,
    duration: float, jpeg_draft: bool = False, pixel_input: bool = False,
) -> dict[str, object]:  # fmt: skip
    """Run one configuration in spawned processes: images/s and per-call latency."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(cfg.processes)
    results = ctx.Queue()
    job = Job(str(model_path), items, spec, cfg, warmup, duration, jpeg_draft, pixel_input)
    procs = [
        ctx.Process(target=_worker, args=(job, barrier, results, i), daemon=True)
        for i in range(cfg.processes)
    ]
    for p in procs:
        p.start()
    got = []
    try:
        for _ in procs:
            got.append(results.get(timeout=WORKER_TIMEOUT_S + warmup + duration))
    except queue_mod.Empty:
        raise RuntimeError(f"limit {cfg.name}: a worker did not report in time") from None
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
    errors = [msg for status, _, msg in got if status == "error"]
    if errors:
        raise RuntimeError(f"limit {cfg.name}: {errors[0]}")
    images_per_s = sum(images / elapsed for _, _, (images, elapsed, *_) in got if elapsed > 0)
    lat_ms = np.concatenate([np.asarray(lat) for _, _, (_, _, lat, _) in got]) * 1e3
    images = sum(r[2][0] for r in got)
    cpu_s = sum(r[2][3] for r in got)
    return {
        "config": cfg.name,
        "description": cfg.describe(),
        "processes": cfg.processes,
        "intra_op_threads": cfg.threads,
        "spinning": cfg.spinning,
        "batch": cfg.batch,
        "images_per_s": images_per_s,
        "images_per_cpu_s": images / cpu_s if cpu_s > 0 else None,
        "call_latency_ms": {f"p{q}": percentile(lat_ms, q) for q in (50, 90, 99)},
        "calls": int(lat_ms.size),
    }


def measure_limit(
    model_path: Path, items: list, spec: Preprocessing, *, configs: list[LimitConfig],
    warmup: float, duration: float, jpeg_draft: bool = False, pixel_input: bool = False,
    progress=print,
) -> dict[str, object]:  # fmt: skip
    """Every configuration in turn; the best throughput and the single-image p50."""
    rows = []
    for cfg in configs:
        progress(f"limit {cfg.name:<10} {cfg.describe()} ...")
        rows.append(
            measure(cfg, model_path, items, spec, warmup, duration, jpeg_draft, pixel_input)
        )
    cores = max(c.processes * c.threads for c in configs)
    out = summarise_limit(rows, cores, model_path)
    out["jpeg_draft"] = jpeg_draft
    return out


def summarise_limit(rows: list[dict], cores: int, model_path: Path | str) -> dict[str, object]:
    best = max(rows, key=lambda r: r["images_per_s"])
    per_cpu = max(rows, key=lambda r: r.get("images_per_cpu_s") or 0.0)
    single = [r for r in rows if r["batch"] == 1 and r["processes"] == 1]
    p50_row = min(single, key=lambda r: r["call_latency_ms"]["p50"]) if single else None
    return {
        "model_path": str(model_path),
        "provider": "CPUExecutionProvider",
        "cores": cores,
        "configs": rows,
        "images_per_s": best["images_per_s"],
        "best_config": best["config"],
        "images_per_cpu_s": per_cpu.get("images_per_cpu_s"),
        "best_cpu_config": per_cpu["config"],
        "p50_ms": p50_row["call_latency_ms"]["p50"] if p50_row else math.nan,
        "p50_config": p50_row["config"] if p50_row else None,
    }


def combine_limits(rounds: list[dict]) -> dict:
    """The limit over several rounds: the first round's table, the medians of the rounds'
    images/s and single-image p50, each round's numbers under "rounds"."""
    from imgclf.client.bench.stats import median

    out = dict(rounds[0])
    if len(rounds) > 1:
        out["images_per_s"] = median([r["images_per_s"] for r in rounds])
        out["p50_ms"] = median([r["p50_ms"] for r in rounds])
        out["images_per_cpu_s"] = median([r.get("images_per_cpu_s") for r in rounds])
        keys = ("images_per_s", "best_config", "p50_ms", "p50_config", "images_per_cpu_s")
        out["rounds"] = [{k: r.get(k) for k in keys} for r in rounds]
    return out
