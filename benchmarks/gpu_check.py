"""The GPU path, proved or disproved in one command: `python -m benchmarks.gpu_check`.

    python -m benchmarks.gpu_check stage             # here: wheels, pieces, the device calls
    python -m benchmarks.gpu_check run OUTDIR        # on the GPU machine (the last call)
    python -m benchmarks.gpu_check run OUTDIR --cpu  # dry run: every step that needs no CUDA

`run` prints one table row per finding as it goes and writes OUTDIR/gpu_check.json and
OUTDIR/gpu_check.md. A row is `pass`, `FAIL` (a GPU claim is false: the command exits 1 and
says why) or `skip` (with the reason: no CUDA in --cpu, TensorRT not installed, out of time);
`info` rows are measurements with no claim attached. docs/performance.md says what each
row must show on an H100 and why.

Steps, in order of what matters most when device time is short:
  env        ONNX Runtime's providers, PyTorch's CUDA, the GPU's name
  providers  every bundled model served with --providers cuda --require-gpu: the provider
             ONNX Runtime really runs, the load log line, imgclf_model_info{provider}, NVML
  parity     GPU against CPU outputs on the same real photos, FP32 and FP16, top-1 equal
  engine     IO binding with per-bucket buffers, CUDA graphs on/off, TensorRT engine cache
  limit      the in-process limit: decode+preprocess per core, GPU images/s at batch 32
  served     imgclf bench against the GPU server, JPEG and tensors, 1/16/64/256 clients:
             the batches the batcher formed, event-loop and decode-thread busy time, GPU
             utilisation, served/limit
  train      a short fine-tuning of a torchvision model with our pipeline (AMP, channels-
             last) on CUDA and the same command on CPU, images/s per epoch; its export with
             the parity gate; the exported model served by the GPU server
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
TOP1_MIN_AGREEMENT = 1.0
"""GPU and CPU must agree on the top-1 class of every image (FP32 and FP16)."""
FP32_ATOL = 1e-3
"""Largest |GPU - CPU| difference of an FP32 output accepted (cuDNN picks other kernels)."""
FP16_ATOL = 5e-2


@dataclass
class Row:
    step: str
    name: str
    status: str  # pass | FAIL | skip | info
    value: str = ""
    detail: str = ""


@dataclass
class Report:
    mode: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add(self, step: str, name: str, status: str, value: object = "", detail: str = "") -> None:
        row = Row(step, name, status, str(value), detail)
        self.rows.append(row)
        print(format_row(row), flush=True)

    def check(self, step: str, name: str, ok: bool, value: object = "", why: str = "") -> bool:
        self.add(step, name, "pass" if ok else "FAIL", value, "" if ok else why)
        return ok

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]


def format_row(row: Row) -> str:
    text = f"{row.step:<9} {row.status:<5} {row.name:<44} {row.value}"
    return f"{text}  ({row.detail})" if row.detail else text


def say(msg: str) -> None:
    print(f"# {msg}", flush=True)


# --- environment -----------------------------------------------------------------------------


@dataclass
class Env:
    gpu: bool
    """Whether this run proves GPU claims (False with --cpu)."""
    providers: str
    """What the server is started with: cuda or cpu."""
    work: Path
    short: bool
    deadline: float
    server_args: list[str]

    def left(self) -> float:
        return self.deadline - time.monotonic()


def step_env(env: Env, report: Report) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    report.data["env"] = info = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_file": ort.__file__,
        "available_providers": available,
        "cores": os.cpu_count(),
    }
    report.add("env", "python / onnxruntime", "info", f"{info['python']} / {ort.__version__}")
    report.add("env", "ONNX Runtime providers", "info", ",".join(available))
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpu_name"] = torch.cuda.get_device_name(0)
        report.add(
            "env", "torch / CUDA", "info", f"{torch.__version__} / {torch.cuda.is_available()}"
        )
    except ImportError:
        report.add("env", "torch", "skip", "", "not installed")
    if env.gpu:
        report.check(
            "env",
            "CUDAExecutionProvider available",
            CUDA_EP in available,
            ",".join(available),
            "onnxruntime-gpu not installed or not first on PYTHONPATH (see the staging calls)",
        )
        report.check(
            "env",
            "PyTorch sees the GPU",
            bool(info.get("torch_cuda")),
            info.get("gpu_name", "no"),
            "torch.cuda.is_available() is False",
        )


# --- the server, its log and its metrics -----------------------------------------------------


def bundled_models() -> list[str]:
    return sorted(p.parent.parent.name for p in MODELS.glob("*/*/model.onnx"))


def server_flags(env: Env) -> list[str]:
    flags = ["--providers", env.providers]
    if env.gpu:
        flags.append("--require-gpu")
    return [*flags, *env.server_args]


@contextlib.contextmanager
def server(env: Env, repo: Path, *extra: str) -> Iterator[object]:
    from imgclf.client.bench.launcher import start_server

    workdir = Path(tempfile.mkdtemp(prefix="server-", dir=env.work))
    proc = start_server(repo, workdir, *server_flags(env), *extra)
    try:
        yield proc
    finally:
        proc.stop()


LOAD_LINE = re.compile(
    r"model (\S+) version (\d+) loaded in .* on (\S+) \((.*?)\)(?:; IO binding[^;]*)?(?:; .*)?$"
)
"""imgclf.models.loader's load log line: model, version, provider, reason (then the buckets)."""


def load_lines(log: str) -> dict[str, tuple[str, str, str]]:
    """model -> (load log line, provider, reason)."""
    out = {}
    for line in log.splitlines():
        m = LOAD_LINE.search(line.rstrip())
        if m:
            out[m.group(1)] = (line.strip(), m.group(3), m.group(4))
    return out


def step_providers(env: Env, report: Report) -> None:
    from imgclf.client.bench.scrape import fetch

    want = CUDA_EP if env.gpu else CPU_EP
    with server(env, MODELS) as srv:
        lines = load_lines(srv.log())
        samples = fetch(srv.metrics_url)
    info = {
        m: {"provider": p}
        for (n, lbl), _ in samples.items()
        if n == "imgclf_model_info"
        for m, p in [(dict(lbl).get("model"), dict(lbl).get("provider"))]
    }
    report.data["providers"] = {"load_lines": lines, "model_info": info}
    for model in bundled_models():
        line = lines.get(model)
        report.check(
            "providers",
            f"{model}: load log line on {want}",
            line is not None and line[1] == want,
            line[1] if line else "no load line",
            line[0] if line else "",
        )
        if line:
            report.add("providers", f"{model}: load log line", "info", line[0].split(": ", 1)[-1])
        got = info.get(model, {}).get("provider")
        report.check(
            "providers",
            f"{model}: imgclf_model_info{{provider}}",
            got == want,
            got or "absent",
            f"expected {want}",
        )
    gauges = {n: v for (n, _), v in samples.items() if n.startswith("imgclf_gpu_")}
    report.data["providers"]["gpu_gauges"] = gauges
    if env.gpu:
        for name in (
            "imgclf_gpu_utilization_ratio",
            "imgclf_gpu_memory_used_bytes",
            "imgclf_gpu_memory_total_bytes",
        ):
            report.check(
                "providers",
                f"/metrics {name}",
                name in gauges,
                gauges.get(name, "absent"),
                "NVML gauges missing",
            )
    else:
        report.add("providers", "NVML gauges on /metrics", "skip", len(gauges), "no GPU (--cpu)")


# --- parity ----------------------------------------------------------------------------------


def real_inputs(model_path: Path) -> tuple[np.ndarray, object]:
    """The bench's real photos, preprocessed as the model wants, and their mirror images:
    (N, C, H, W) float32."""
    from imgclf.client.bench import inputs

    spec = inputs.spec_from_onnx(model_path.parent.parent.name, model_path)
    photos = inputs.jpeg_images(inputs.parse_size("0.3mp"))
    tensors = np.stack([t for _, t in inputs.tensors(photos, spec)]).astype(np.float32)
    return np.concatenate([tensors, tensors[..., ::-1]]).copy(), spec


def session(path: Path | bytes, provider: str):  # -> ort.InferenceSession
    import onnxruntime as ort

    from imgclf.runtime.options import ExecutionOptions, session_options
    from imgclf.runtime.providers import preload_cuda_libraries

    if provider == CUDA_EP:
        preload_cuda_libraries()
    providers = [provider, CPU_EP] if provider != CPU_EP else [CPU_EP]
    src = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(
        src, session_options(ExecutionOptions(providers="cpu")), providers=providers
    )


def fp16_model(path: Path) -> bytes:
    """The model with float16 weights and compute, float32 input and output kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load(str(path)), keep_io_types=True).SerializeToString()


def run_session(sess, batch: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: batch})[0], dtype=np.float32)


def compare(
    report: Report, model: str, label: str, got: np.ndarray, ref: np.ndarray, atol: float
) -> dict:
    diff = float(np.max(np.abs(got - ref)))
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    report.check(
        "parity",
        f"{model}: {label} top-1 equal",
        agree >= TOP1_MIN_AGREEMENT,
        f"{agree:.0%} of {len(ref)}",
        "top-1 differs",
    )
    report.check(
        "parity", f"{model}: {label} max |diff|", diff <= atol, f"{diff:.2e}", f"over {atol:g}"
    )
    return {"max_abs_diff": diff, "top1_agreement": agree, "images": len(ref)}


def step_parity(env: Env, report: Report) -> None:
    out: dict[str, dict] = {}
    for model in bundled_models():
        path = MODELS / model / "1" / "model.onnx"
        batch, _ = real_inputs(path)
        ref = run_session(session(path, CPU_EP), batch)
        out[model] = {}
        half = fp16_model(path)
        if env.gpu:
            gpu = session(path, CUDA_EP)
            report.check(
                "parity",
                f"{model}: FP32 session on CUDA",
                gpu.get_providers()[0] == CUDA_EP,
                gpu.get_providers()[0],
            )
            out[model]["fp32"] = compare(
                report, model, "FP32 GPU vs CPU", run_session(gpu, batch), ref, FP32_ATOL
            )
            out[model]["fp16"] = compare(
                report,
                model,
                "FP16 GPU vs FP32 CPU",
                run_session(session(half, CUDA_EP), batch),
                ref,
                FP16_ATOL,
            )
        else:
            report.add("parity", f"{model}: FP32 GPU vs CPU", "skip", "", "no CUDA (--cpu)")
            try:
                got = run_session(session(half, CPU_EP), batch)
            except Exception as e:  # ONNX Runtime's CPU provider lacks many FP16 kernels
                report.add("parity", f"{model}: FP16 model on CPU", "skip", "", str(e)[:120])
                continue
            out[model]["fp16_cpu"] = compare(
                report, model, "FP16 (CPU) vs FP32 CPU", got, ref, FP16_ATOL
            )
    report.data["parity"] = out


# --- engine options: IO binding, CUDA graphs, TensorRT -----------------------------------------


def time_engine(engine, batch: np.ndarray, seconds: float) -> dict:
    """Median ms per run and images/s of `engine.run(batch)` over `seconds`."""
    for _ in range(3):
        engine.run(batch)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t = time.perf_counter()
        engine.run(batch)
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {
        "batch": len(batch),
        "median_ms": median * 1e3,
        "images_per_s": len(batch) / median,
        "runs": len(times),
    }


def make_engine(path: Path, max_batch: int, **options: object):
    """An Engine as the server builds one: with IO binding, buffers (and CUDA graphs when
    asked) per batch size bucket up to `max_batch`."""
    from imgclf.runtime.buckets import bucket_sizes
    from imgclf.runtime.engine import Engine
    from imgclf.runtime.options import ExecutionOptions

    engine = Engine(path, ExecutionOptions(**options))  # type: ignore[arg-type]
    shape = tuple(int(d) for d in engine.info.input_shape[1:])
    if engine.info.io_binding:
        engine.prepare_buckets(bucket_sizes(max_batch), shape)
    return engine, shape


def tensorrt_missing() -> str | None:
    """Why the TensorRT provider cannot run here, or None."""
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(name)
            return None
    return "libnvinfer (TensorRT) is not installed on this host"


def step_engine(env: Env, report: Report) -> None:
    if not env.gpu:
        for name in ("IO binding per-bucket buffers", "CUDA graphs on/off", "FP16 speed",
                     "TensorRT cache"):  # fmt: skip
            report.add("engine", name, "skip", "", "no CUDA (--cpu)")
        return
    out: dict[str, object] = {}
    seconds = 0.5 if env.short else 1.5
    for model in bundled_models():
        path = MODELS / model / "1" / "model.onnx"
        half = env.work / f"{model}_fp16.onnx"
        half.write_bytes(fp16_model(path))
        images, _ = real_inputs(path)
        batches = [np.resize(images, (n, *images.shape[1:])) for n in (1, 32)]
        rows: dict[str, list[dict]] = {}
        for label, file, opts in (
            ("no IO binding", path, {"io_binding": False}),
            ("IO binding, buckets", path, {"io_binding": True}),
            ("IO binding + CUDA graphs", path, {"io_binding": True, "cuda_graphs": True}),
            ("FP16 model, IO binding", half, {"io_binding": True}),
        ):
            try:
                engine, _ = make_engine(file, 32, providers="cuda", **opts)
            except Exception as e:
                report.check("engine", f"{model}: {label}", False, "", str(e)[:200])
                continue
            times = [time_engine(engine, b, seconds) for b in batches]
            ok = engine.info.io_binding == opts["io_binding"] and engine.info.cuda_graphs == bool(
                opts.get("cuda_graphs")
            )
            rows[label] = [dict(t, buckets=engine.buckets) for t in times]
            report.check(
                "engine",
                f"{model}: {label}",
                ok,
                " | ".join(
                    f"batch {t['batch']}: {t['median_ms']:.2f} ms, {t['images_per_s']:.0f} img/s"
                    for t in times
                ),
                f"engine reports io_binding={engine.info.io_binding} "
                f"cuda_graphs={engine.info.cuda_graphs}",
            )
            del engine
        out[model] = rows
    why = tensorrt_missing()
    if why:
        report.add("engine", "TensorRT EP with engine cache", "skip", "", why)
    else:
        model = (
            "efficientnet_lite0"
            if "efficientnet_lite0" in bundled_models()
            else bundled_models()[0]
        )
        path = MODELS / model / "1" / "model.onnx"
        cache = env.work / "trt-cache"
        starts = []
        for _ in range(2):
            t = time.perf_counter()
            engine, _ = make_engine(path, 32, providers="tensorrt", tensorrt_cache_dir=cache)
            starts.append(time.perf_counter() - t)
            report.check(
                "engine",
                "TensorRT provider runs the model",
                engine.info.provider == "TensorrtExecutionProvider",
                engine.info.provider,
            )
            del engine
        out["tensorrt_start_s"] = starts
        report.check(
            "engine",
            "TensorRT second start faster (cache)",
            starts[1] < starts[0],
            f"{starts[0]:.1f} s -> {starts[1]:.1f} s ({starts[0] / starts[1]:.1f}x)",
            "the engine cache did not shorten the start",
        )
    report.data["engine"] = out


# --- the in-process limit ----------------------------------------------------------------------


def step_limit(env: Env, report: Report) -> None:
    from imgclf.client.bench import inputs
    from imgclf.imaging import preprocess_bytes

    out: dict[str, dict] = {}
    photos = [b for _, b in inputs.jpeg_images(inputs.parse_size("0.3mp"))]
    cores = len(os.sched_getaffinity(0))
    for model in bundled_models():
        path = MODELS / model / "1" / "model.onnx"
        spec = inputs.spec_from_onnx(model, path)
        n, t, cpu = 0, time.perf_counter(), time.thread_time()
        while n < 20 or time.perf_counter() - t < (0.5 if env.short else 2.0):
            preprocess_bytes(photos[n % len(photos)], spec.preprocessing, jpeg_draft=True)
            n += 1
        wall_rate = n / (time.perf_counter() - t)
        # CPU seconds of this thread per image: what one core does when it is ours alone
        # (the wall-clock rate also counts the time other processes held the core).
        per_core = n / max(time.thread_time() - cpu, 1e-9)
        row: dict[str, float | None] = {
            "decode_per_core": per_core,
            "decode_per_core_wall": wall_rate,
            "decode_all_cores": per_core * cores,
        }
        report.add(
            "limit",
            f"{model}: JPEG decode+preprocess, 1 core",
            "info",
            f"{per_core:.0f} img/s of CPU time ({wall_rate:.0f} by the wall clock), "
            f"{per_core * cores:.0f} on {cores} cores",
        )
        if env.gpu:
            batch, _ = real_inputs(path)
            engine, _ = make_engine(path, 32, providers="cuda")
            t32 = time_engine(
                engine, np.resize(batch, (32, *batch.shape[1:])), 1.0 if env.short else 3.0
            )
            row["gpu_batch32"] = t32["images_per_s"]
            row["tensor_limit"] = t32["images_per_s"]
            row["jpeg_limit"] = min(t32["images_per_s"], per_core * cores)
            report.add(
                "limit",
                f"{model}: GPU batch 32 (IO binding)",
                "info",
                f"{t32['images_per_s']:.0f} img/s, {t32['median_ms']:.2f} ms/batch",
            )
            del engine
        else:
            report.add("limit", f"{model}: GPU batch 32", "skip", "", "no CUDA (--cpu)")
        out[model] = row
    report.data["limit"] = out


# --- served ------------------------------------------------------------------------------------


class Sampler:
    """GPU utilisation (NVML) and per-thread CPU time of the server process, sampled while a
    load point runs: how busy the event loop (the main thread), the decode threads
    (preprocess_*) and the inference threads (infer-*) were."""

    def __init__(self, pid: int, gpu: bool) -> None:
        self.pid, self.gpu = pid, gpu
        self.util: list[float] = []
        self._stop = threading.Event()
        self._nvml = None
        if gpu:
            with contextlib.suppress(Exception):
                import pynvml

                pynvml.nvmlInit()
                self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))

    def threads(self) -> dict[str, float]:
        """Thread group -> CPU seconds (utime + stime) of the server's threads."""
        tick = os.sysconf("SC_CLK_TCK")
        groups: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                stat = (task / "stat").read_text()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu = (int(fields[11]) + int(fields[12])) / tick
                group = (
                    "event_loop"
                    if task.name == str(self.pid)
                    else (
                        "decode"
                        if name.startswith("preprocess")
                        else "infer"
                        if name.startswith("infer")
                        else "other"
                    )
                )
                groups[group] = groups.get(group, 0.0) + cpu
        return groups

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            if self._nvml:
                nvml, handle = self._nvml
                with contextlib.suppress(Exception):
                    self.util.append(nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)

    @contextlib.contextmanager
    def sampling(self, loaded_s: float) -> Iterator[dict]:
        """Samples while the block runs; `loaded_s` is how long of it the load ran (the
        bench's warm-up and measured seconds; the server is idle while the bench sets up),
        over which the CPU seconds of each thread group become busy cores."""
        out: dict[str, object] = {}
        before, t = self.threads(), time.monotonic()
        self.util, self._stop = [], threading.Event()
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield out
        finally:
            self._stop.set()
            thread.join()
            wall = min(loaded_s, time.monotonic() - t)
            after = self.threads()
            out["busy_cores"] = {  # a thread that ended meanwhile took its CPU time along
                k: max(0.0, after.get(k, 0) - before.get(k, 0)) / wall for k in after
            }
            out["gpu_utilization_mean"] = float(np.mean(self.util)) if self.util else None
            out["gpu_utilization_max"] = float(np.max(self.util)) if self.util else None


def batch_histogram(before: dict, after: dict, model: str) -> dict[str, float]:
    """Batches per size bucket (le) that the batcher formed between two scrapes."""

    def buckets(s: dict) -> dict[str, float]:
        return {
            dict(lbl)["le"]: v
            for (n, lbl), v in s.items()
            if n == "imgclf_batch_size_bucket" and dict(lbl).get("model") == model
        }

    b, a = buckets(before), buckets(after)
    cumulative = sorted(((float(le), a[le] - b.get(le, 0.0)) for le in a), key=lambda x: x[0])
    out, prev = {}, 0.0
    for le, count in cumulative:
        if count - prev > 0:
            out[f"<={le:g}"] = count - prev
        prev = count
    return out


def warmup_s(duration: float) -> float:
    return min(1.0, duration / 2)


def bench_point(
    target: str,
    metrics_url: str,
    model: str,
    kind: str,
    clients: int,
    duration: float,
    client_processes: int,
) -> dict:
    from imgclf.client.bench import cli, runner

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--target",
            target,
            "--metrics-url",
            metrics_url,
            "--model",
            model,
            "--model-repository",
            str(MODELS),
            "--input",
            kind,
            "--concurrency",
            str(clients),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup_s(duration)),
            "--client-processes",
            str(min(client_processes, clients)),
        ]
    )
    result = runner.execute(args)
    if not result["points"]:
        raise RuntimeError("imgclf bench returned no point")
    return result["points"][0]


def step_served(env: Env, report: Report) -> None:
    from imgclf.client.bench.scrape import fetch

    # The dry run serves the small model: it keeps the code path alive, it measures nothing.
    model = (
        "digits"
        if env.short or "efficientnet_lite0" not in bundled_models()
        else ("efficientnet_lite0")
    )
    clients = [1, 16] if env.short else [1, 16, 64, 256]
    duration = 1.0 if env.short else 3.0
    cores = len(os.sched_getaffinity(0))
    client_processes = 1 if env.short else max(1, min(4, cores // 4))
    limit = report.data.get("limit", {}).get(model, {})  # type: ignore[union-attr]
    out: list[dict] = []
    with server(env, MODELS, "--model-control-mode", "explicit", "--load-model", model) as srv:
        sampler = Sampler(srv.proc.pid, env.gpu)
        for kind in ("jpeg", "tensor"):
            best = 0.0
            for c in clients:
                if env.left() < duration + 20:
                    report.add("served", f"{kind} c={c}", "skip", "", "out of time budget")
                    continue
                before = fetch(srv.metrics_url)
                with sampler.sampling(duration + warmup_s(duration)) as s:
                    point = bench_point(
                        srv.target, srv.metrics_url, model, kind, c, duration, client_processes
                    )
                after = fetch(srv.metrics_url)
                summary = point["summary"]
                rps = float(summary["throughput_ips"])
                best = max(best, rps)
                lim = limit.get(f"{kind}_limit") if env.gpu else None
                busy = s["busy_cores"]
                row = {
                    "input": kind,
                    "clients": c,
                    "images_per_s": rps,
                    "p50_ms": summary["latency_ms"]["p50"],
                    "batches": batch_histogram(before, after, model),
                    "mean_batch": (point.get("server") or {}).get("mean_batch_size"),
                    "busy_cores": busy,
                    "gpu_utilization_mean": s["gpu_utilization_mean"],
                    "gpu_utilization_max": s["gpu_utilization_max"],
                    "served_over_limit": rps / lim if lim else None,
                    "errors": summary["errors"],
                }
                out.append(row)
                mean_batch = row["mean_batch"]
                util = s["gpu_utilization_max"]
                report.add(
                    "served",
                    f"{model} {kind} c={c}",
                    "info",
                    f"{rps:.0f} img/s, p50 {row['p50_ms'] or 0:.1f} ms, mean batch "
                    f"{mean_batch or 0:.1f}, loop {busy.get('event_loop', 0):.2f} core, decode "
                    f"{busy.get('decode', 0):.2f}, infer {busy.get('infer', 0):.2f}, gRPC+other "
                    f"{busy.get('other', 0):.2f}"
                    + (f", GPU max {util:.0%}" if util is not None else "")
                    + (f", served/limit {rps / lim:.2f}" if lim else ""),
                    f"batches {row['batches']}",
                )
            report.check(
                "served",
                f"{model} {kind}: requests served",
                best > 0,
                f"{best:.0f} img/s",
                "no request succeeded",
            )
    report.data["served"] = out


# --- training, export, serving the result -------------------------------------------------------


def history_rates(run_dir: Path, images: int) -> list[float]:
    with (run_dir / "history.csv").open() as f:
        return [images / float(r["time_s"]) for r in csv.DictReader(f)]


def train(env: Env, device: str, out_dir: Path, plan: TrainPlan, epochs: int) -> list[float]:
    """Run `imgclf.training.train` in a subprocess; images/s of each epoch (its wall time, the
    validation pass included)."""
    from imgclf.training.data.builtin import load_builtin_split

    cmd = [
        sys.executable,
        "-m",
        "imgclf.training.train",
        "--dataset",
        plan.dataset,
        "--model",
        plan.model,
        "--input-size",
        str(plan.size),
        "--epochs",
        str(epochs),
        "-b",
        "64",
        "--lr",
        "0.05",
        "--device",
        device,
        "--output-dir",
        str(out_dir),
        "--no-progress",
        "-j",
        str(plan.workers),
    ]
    if device == "cuda":
        cmd += ["--amp", "--channels-last"]
    say(" ".join(cmd[1:]))
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30, env.left())
    )
    if done.returncode != 0:
        raise RuntimeError(f"training failed ({done.returncode}): {done.stderr[-1500:]}")
    images = len(load_builtin_split(plan.dataset, "train")[1])
    return history_rates(out_dir, images)


@dataclass(frozen=True)
class TrainPlan:
    model: str
    dataset: str
    size: int
    gpu_epochs: int
    cpu_epochs: int
    workers: int


FULL_TRAIN = TrainPlan("resnet18", "digits", 64, gpu_epochs=3, cpu_epochs=1, workers=4)
SHORT_TRAIN = TrainPlan("resnet18", "lfw_faces", 32, gpu_epochs=1, cpu_epochs=1, workers=0)


def step_train(env: Env, report: Report) -> None:
    plan = SHORT_TRAIN if env.short else FULL_TRAIN
    model, size = plan.model, plan.size
    out: dict[str, object] = asdict(plan)
    devices = (["cuda"] if env.gpu else []) + ["cpu"]
    for device in devices:
        if device == "cpu" and env.gpu and env.left() < 90:
            report.add("train", "the same command on CPU", "skip", "", "out of time budget")
            continue
        epochs = plan.gpu_epochs if device == "cuda" else plan.cpu_epochs
        rates = train(env, device, env.work / f"train-{device}", plan, epochs)
        out[f"{device}_images_per_s"] = rates
        report.add(
            "train",
            f"{model} {size}px on {device}" + (" (AMP, channels-last)" if device == "cuda" else ""),
            "info",
            "img/s per epoch " + ", ".join(f"{r:.0f}" for r in rates),
        )
    if not env.gpu:
        report.add("train", "GPU training (AMP, channels-last)", "skip", "", "no CUDA (--cpu)")
    elif "cpu_images_per_s" in out:
        gpu, cpu = out["cuda_images_per_s"], out["cpu_images_per_s"]
        ratio = max(gpu) / max(cpu)  # type: ignore[arg-type]
        out["gpu_over_cpu"] = ratio
        report.check(
            "train",
            "GPU epoch faster than CPU",
            ratio > 1,
            f"{ratio:.1f}x",
            "training on the GPU is not faster",
        )
    run_dir = env.work / f"train-{devices[0]}"
    repo = env.work / "repo"
    name = "gpucheck_resnet18"
    cmd = [
        sys.executable,
        "-m",
        "imgclf.training.export",
        str(run_dir / "best.pth"),
        "--name",
        name,
        "--model-repository",
        str(repo),
        "--force",
        "--version",
        "1",
    ]
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30, env.left())
    )
    report.check(
        "train",
        "export with its parity gate",
        done.returncode == 0,
        f"{repo / name / '1' / 'model.onnx'}" if done.returncode == 0 else "",
        done.stderr[-300:],
    )
    out["export_log"] = (done.stdout + done.stderr)[-2000:]
    if done.returncode != 0:
        report.data["train"] = out
        return
    want = CUDA_EP if env.gpu else CPU_EP
    with server(env, repo) as srv:
        line = load_lines(srv.log()).get(name)
        report.check(
            "train",
            f"exported model served on {want}",
            bool(line and line[1] == want),
            line[1] if line else "no load line",
            line[0] if line else "",
        )
        point = bench_point(
            srv.target, srv.metrics_url, name, "jpeg", 16, 1.0 if env.short else 3.0, 1
        )
        rps = float(point["summary"]["throughput_ips"])
        out["served_p50_ms"] = point["summary"]["latency_ms"]["p50"]
        out["served_images_per_s"] = rps
        report.check(
            "train",
            "exported model answers (JPEG, 16 clients)",
            rps > 0,
            f"{rps:.0f} img/s",
            "no request succeeded",
        )
    report.data["train"] = out


# --- the run -----------------------------------------------------------------------------------


STEPS: list[tuple[str, Callable[[Env, Report], None]]] = [
    ("env", step_env),
    ("providers", step_providers),
    ("parity", step_parity),
    ("engine", step_engine),
    ("limit", step_limit),
    ("served", step_served),
    ("train", step_train),
]


def markdown(report: Report) -> str:
    lines = [
        f"# GPU check ({report.mode})",
        "",
        f"{len(report.failures)} failed, {sum(r.status == 'pass' for r in report.rows)} passed, "
        f"{sum(r.status == 'skip' for r in report.rows)} skipped.",
        "",
        "| step | status | finding | value | detail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report.rows:
        cells = [r.step, r.status, r.name, r.value, r.detail]
        lines.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines) + "\n"


def write(report: Report, outdir: Path) -> None:
    report.data["wall_s"] = round(time.monotonic() - report.started, 1)
    doc = {"mode": report.mode, "rows": [asdict(r) for r in report.rows], **report.data}
    (outdir / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str))
    (outdir / "gpu_check.md").write_text(markdown(report))


def run(args: argparse.Namespace) -> int:
    args.outdir.mkdir(parents=True, exist_ok=True)
    gpu = not args.cpu
    report = Report("GPU" if gpu else "CPU dry run (--cpu)")
    only = set(args.steps.split(",")) if args.steps else None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        env = Env(
            gpu=gpu,
            providers="cuda" if gpu else "cpu",
            work=Path(work),
            short=args.short,
            deadline=time.monotonic() + args.budget_s,
            server_args=args.server_args.split(),
        )
        say(f"gpu_check {report.mode}, budget {args.budget_s:.0f} s")
        print(format_row(Row("step", "finding", "state", "value")), flush=True)
        for name, step in STEPS:
            if only is not None and name not in only:
                continue
            if env.left() <= 0:
                report.add(name, "step", "skip", "", "out of time budget")
                continue
            t = time.monotonic()
            try:
                step(env, report)
            except Exception as e:
                report.add(name, "step raised", "FAIL", type(e).__name__, str(e)[-400:])
                report.data.setdefault("tracebacks", {})[name] = traceback.format_exc()  # type: ignore[index]
            report.data.setdefault("step_seconds", {})[name] = round(time.monotonic() - t, 1)  # type: ignore[index]
            write(report, args.outdir)  # after every step: a run killed later keeps these
    write(report, args.outdir)
    say(
        f"wrote {args.outdir / 'gpu_check.json'} and {args.outdir / 'gpu_check.md'} "
        f"in {report.data['wall_s']} s"
    )
    if report.failures:
        for r in report.failures:
            print(f"FAILED: {r.step}: {r.name}: {r.value} {r.detail}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from benchmarks import gpu_stage

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stage", help="here: wheels, pieces and the device calls")
    gpu_stage.add_arguments(st)
    r = sub.add_parser("run", help="on the GPU machine (or --cpu here)")
    r.add_argument("outdir", type=Path, help="where gpu_check.json and gpu_check.md go")
    r.add_argument("--cpu", action="store_true", help="dry run: only what needs no CUDA")
    r.add_argument("--short", action="store_true", help="short durations (CI)")
    r.add_argument("--budget-s", type=float, default=210.0, help="stop starting steps after")
    r.add_argument(
        "--steps", default="", help="comma-separated subset of: " + ",".join(n for n, _ in STEPS)
    )
    r.add_argument("--server-args", default="", help="extra `imgclf serve` arguments")
    args = parser.parse_args(argv)
    if args.command == "stage":
        return gpu_stage.stage(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
