"""FP32 against INT8 of one model, served side by side by one server, measured ABAB.

    python -m benchmarks.precision_ab --model efficientnet_lite0 [--int8 FILE] \
        [--input jpeg|tensor] [--concurrency 16] [--rounds 3] [--duration 10]

With ``--engine-only``: no server, the two ONNX Runtime sessions alone (one intra-op thread,
batches of one image, ABAB): what the kernels give, before decoding and serving.

A temporary repository holds the model twice: ``<model>_fp32`` (config.json
``precision: float``) and ``<model>_int8`` (``precision: int8``), both from the same version
folder (its ``model.int8.onnx``, or the file ``--int8`` names, e.g. one that failed the
accuracy gate, to measure speed only; the table then says so). One ``imgclf serve`` serves
both; each round measures FP32 then INT8 with ``imgclf bench``'s load runner on the same
inputs (real JPEG photos or preprocessed tensors) and prints images/s, p50/p99, server CPU
per image and the INT8/FP32 ratio, then the median and spread over rounds. The machine is
shared: read the spread before the medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import onnx

from imgclf.client.bench import cli as bench_cli
from imgclf.client.bench import runner
from imgclf.client.bench.launcher import serving
from imgclf.repolayout import INT8_FILE, MODEL_FILE, versions

VARIANTS = (("fp32", "float"), ("int8", "int8"))


def make_repository(root: Path, model_dir: Path, int8: Path | None) -> tuple[str, dict]:
    """The temporary repository; returns (name, what the INT8 file says about its gate)."""
    entry = versions(model_dir)[0]
    source = entry.path.parent
    int8 = int8 or source / INT8_FILE
    if not int8.is_file():
        raise FileNotFoundError(f"no {INT8_FILE} in {source}; give --int8")
    props = {p.key: p.value for p in onnx.load(str(int8), load_external_data=False).metadata_props}
    gate = json.loads(props.get("accuracy_gate", "null")) or {"passed": None}
    for tag, precision in VARIANTS:
        folder = root / f"{model_dir.name}_{tag}" / "1"
        folder.mkdir(parents=True)
        shutil.copy(source / MODEL_FILE, folder / MODEL_FILE)
        shutil.copy(int8, folder / INT8_FILE)
        (folder.parent / "config.json").write_text(json.dumps({"precision": precision}))
    return model_dir.name, gate


def describe(gate: dict) -> str:
    if gate.get("passed") is None:
        return "none recorded in the INT8 file (speed only, not an accuracy claim)"
    return "passed" if gate["passed"] else "FAILED (speed only)"


def bench_args(target: str, metrics_url: str, model: str, repo: Path, opts) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args([
        "--target", target, "--metrics-url", metrics_url, "--model", model,
        "--model-repository", str(repo), "--input", opts.input,
        "--concurrency", str(opts.concurrency), "--duration", str(opts.duration),
        "--warmup", str(opts.warmup), "--client-processes", str(opts.client_processes),
    ])  # fmt: skip


def measure(args: argparse.Namespace, precision: str) -> dict:
    result = runner.execute(args)
    served = (result.get("server_model") or {}).get("precision")
    if served != precision:
        raise RuntimeError(f"{args.model} is served at precision {served!r}, not {precision}")
    point = result["points"][0]
    s, server = point["summary"], point["server"]
    rps = s["throughput_ips"]
    cores = server.get("server_cpu_cores")
    return {
        "images_per_s": rps,
        "p50_ms": s["latency_ms"]["p50"],
        "p99_ms": s["latency_ms"]["p99"],
        "server_cpu_ms_per_image": 1000.0 * cores / rps if isinstance(cores, float) else None,
    }


def engine_only(model_dir: Path, int8: Path | None, rounds: int, runs: int = 20) -> None:
    """Milliseconds per image of each variant's session, one thread, alternating."""
    import time

    import numpy as np
    import onnxruntime as ort

    source = versions(model_dir)[0].path.parent
    files = {"fp32": source / MODEL_FILE, "int8": int8 or source / INT8_FILE}
    from imgclf.runtime.options import ExecutionOptions, session_options

    so = session_options(ExecutionOptions(providers="cpu", intra_op_threads=1))  # as served
    sessions = {
        k: ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        for k, f in files.items()
    }
    shape = [d if isinstance(d, int) else 1 for d in sessions["fp32"].get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    name = sessions["fp32"].get_inputs()[0].name
    ms: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(5):
            s.run(None, {name: x})
    for _ in range(rounds):
        for k, s in sessions.items():
            started = time.perf_counter()
            for _ in range(runs):
                s.run(None, {name: x})
            ms[k].append(1000 * (time.perf_counter() - started) / runs)
    ratios = [b / a for a, b in zip(ms["fp32"], ms["int8"], strict=True)]
    for k, v in ms.items():
        print(f"{k}: ms per image median {statistics.median(v):.2f} (min {min(v):.2f}, "
              f"max {max(v):.2f})")  # fmt: skip
    print(f"INT8/FP32 per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--model-repository", type=Path, default=Path("models"))
    p.add_argument("--int8", type=Path, help="INT8 file (default: the version's model.int8.onnx)")
    p.add_argument("--input", choices=("jpeg", "tensor"), default="jpeg")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--client-processes", type=int, default=1)
    p.add_argument("--server-args", default="")
    p.add_argument("--json", type=Path)
    p.add_argument("--engine-only", action="store_true", help="the sessions alone, no server")
    opts = p.parse_args(argv)
    if opts.engine_only:
        engine_only(opts.model_repository / opts.model, opts.int8, max(opts.rounds, 1))
        return 0
    rows: dict[str, list[dict]] = {tag: [] for tag, _ in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="imgclf-precision-") as tmp:
        repo = Path(tmp)
        name, gate = make_repository(repo, opts.model_repository / opts.model, opts.int8)
        with serving(repo, opts.server_args) as server:
            for r in range(opts.rounds):
                for tag, _ in VARIANTS:  # A then B, every round
                    args = bench_args(
                        server.target, server.metrics_url, f"{name}_{tag}", repo, opts
                    )
                    got = measure(args, tag)
                    rows[tag].append(got)
                    print(f"round {r + 1} {tag}: {json.dumps(got)}", flush=True)
    print(
        f"\n{name}, {opts.input} input, {opts.concurrency} clients, {opts.rounds} rounds ABAB "
        f"(shared, noisy machine: see the spread); INT8 gate: {describe(gate)}"
    )
    print("| metric | FP32 median | INT8 median | INT8/FP32 median | ratio per round |")
    print("|---|---|---|---|---|")
    for key in ("images_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_image"):
        a = [x[key] for x in rows["fp32"]]
        b = [x[key] for x in rows["int8"]]
        if None in a or None in b:
            continue
        ratios = [y / x for x, y in zip(a, b, strict=True) if x]
        spread = ", ".join(f"{q:.2f}" for q in ratios)
        print(
            f"| {key} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | "
            f"{statistics.median(ratios):.2f} | {spread} |"
        )
    if opts.json:
        opts.json.write_text(json.dumps({"gate": gate, "rounds": rows, "options": vars(opts)},
                                        default=str, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
