"""The inference kernels alone, side by side: ONNX Runtime and (if installed) OpenVINO, FP32
and INT8 (the same QDQ file for both), per thread count and batch size, measured ABAB.

    python -m benchmarks.engines --model efficientnet_lite0 [--int8-file FILE] \
        [--engines ort,openvino] [--threads 1,2] [--batch 1,4] [--rounds 6] [--runs 20]

No server, no decoding: real photos (the bench's own, 640x480 JPEG) preprocessed as the server
does, then for each (threads, batch) configuration every arm (engine x precision) runs `--runs`
batches in turn, round after round (A B C D A B C D: the same background load), and the table
gives per arm the median milliseconds per image, their range, and the ratio of each round's
time to ONNX Runtime FP32's in the same round (median and range). ONNX Runtime runs with the
server's session options (imgclf.runtime.options); OpenVINO compiles the same ONNX files for
its CPU plugin with a static batch, ``INFERENCE_NUM_THREADS`` and the latency hint, and its
``INFERENCE_PRECISION_HINT`` left at f32 (a CPU without AVX512-BF16 or AMX has no bf16). Each
arm's top-1 on the photos is checked against ONNX Runtime FP32's (agreement printed; with
``--agreement``, only that, on the 108 evaluation crops of the bundled INT8 recipe). This
replaces ``precision_ab --engine-only``; the served comparison is ``imgclf bench --variants``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgclf.client.bench import inputs
from imgclf.repolayout import INT8_FILE, MODEL_FILE, versions

Runner = Callable[[np.ndarray], np.ndarray]


def ort_runner(path: Path, threads: int, batch: int) -> Runner:
    import onnxruntime as ort

    from imgclf.runtime.options import ExecutionOptions, session_options

    so = session_options(ExecutionOptions(providers="cpu", intra_op_threads=threads))
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_runner(path: Path, threads: int, batch: int) -> Runner:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    shape = list(model.inputs[0].get_partial_shape())
    model.reshape([batch, *[d.get_length() for d in shape[1:]]])
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    })  # fmt: skip
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return run


ENGINES = {"ort": ort_runner, "openvino": openvino_runner}


def photo_batches(model: Path, batch: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The bench's photos preprocessed for `model`, in batches of `batch`, and all of them."""
    spec = inputs.spec_from_onnx(model.parent.parent.name, model)
    every = np.stack([t for _, t in inputs.tensors(inputs.jpeg_images((640, 480)), spec)])
    reps = -(-batch // len(every)) * len(every)
    tiled = np.concatenate([every] * (reps // len(every)))
    return [tiled[i : i + batch] for i in range(0, len(tiled) - batch + 1, batch)], every


def measure(
    files: dict[str, Path], engines: list[str], threads: int, batch: int, rounds: int, runs: int
) -> dict[str, dict]:
    """Every arm (engine/precision) of one configuration, ABAB: ms per image per round, the
    ratio to ort/fp32 per round, top-1 agreement with ort/fp32 on the photos."""
    arms = {f"{e}/{p}": ENGINES[e](f, threads, batch) for e in engines for p, f in files.items()}
    batches, every = photo_batches(files["fp32"], batch)
    single = (
        arms
        if batch == 1
        else {k: ENGINES[k.split("/")[0]](files[k.split("/")[1]], threads, 1) for k in arms}
    )
    ref = np.argmax(np.concatenate([single["ort/fp32"](x[None]) for x in every]), axis=-1)
    out = {}
    for k, run in single.items():
        top1 = np.argmax(np.concatenate([run(x[None]) for x in every]), axis=-1)
        out[k] = {"agreement": float(np.mean(top1 == ref)), "ms": []}
    for run in arms.values():
        for x in batches[:3]:
            run(x)
    for _ in range(rounds):
        for k, run in arms.items():
            started = time.perf_counter()
            for i in range(runs):
                run(batches[i % len(batches)])
            out[k]["ms"].append(1000 * (time.perf_counter() - started) / (runs * batch))
    base = out["ort/fp32"]["ms"]
    for row in out.values():
        row["ratio"] = [a / b for a, b in zip(row["ms"], base, strict=True)]
    return out


def agreement(files: dict[str, Path], engines: list[str]) -> str:
    """Top-1 agreement of every arm with ort/fp32 and with ort/<same precision> on the
    evaluation crops of the bundled INT8 recipe (imgclf.training.data.photos: 108 crops and
    mirror images of 8 photos), one image at a time; largest probability difference."""
    from imgclf.imaging import preprocess_image
    from imgclf.training.data.photos import EVALUATION_PHOTOS, photo_set

    spec = inputs.spec_from_onnx("model", files["fp32"]).preprocessing
    crops = [preprocess_image(img, spec)[None] for img in photo_set(EVALUATION_PHOTOS)]
    probs = {}
    for e in engines:
        for p, f in files.items():
            run = ENGINES[e](f, 1, 1)
            logits = np.concatenate([run(x) for x in crops])
            z = np.exp(logits - logits.max(1, keepdims=True))
            probs[f"{e}/{p}"] = z / z.sum(1, keepdims=True)
    lines = [f"{len(crops)} evaluation crops", "| arm | top-1 = ort/fp32 | top-1 = ort of the "
             "same precision | max prob. diff. to ort/fp32 |", "|---|---|---|---|"]  # fmt: skip
    for k, pr in probs.items():
        same = probs[f"ort/{k.split('/')[1]}"]
        a = np.mean(pr.argmax(1) == probs["ort/fp32"].argmax(1))
        b = np.mean(pr.argmax(1) == same.argmax(1))
        d = np.abs(pr - probs["ort/fp32"]).max()
        lines.append(f"| {k} | {100 * a:.1f} % | {100 * b:.1f} % | {d:.3f} |")
    return "\n".join(lines)


def table(results: dict[tuple[int, int], dict[str, dict]]) -> str:
    lines = [
        "| threads | batch | arm | ms/image median | range | time / ort fp32 (median) | range "
        "| top-1 = ort fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (threads, batch), arms in results.items():
        for k, r in arms.items():
            ms, ratio = r["ms"], r["ratio"]
            lines.append(
                f"| {threads} | {batch} | {k} | {statistics.median(ms):.2f} | "
                f"{min(ms):.2f}-{max(ms):.2f} | {statistics.median(ratio):.2f} | "
                f"{min(ratio):.2f}-{max(ratio):.2f} | {100 * r['agreement']:.0f} % |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--model-repository", type=Path, default=Path("models"))
    p.add_argument("--int8-file", type=Path, help="default: the version's model.int8.onnx")
    p.add_argument("--engines", default="ort,openvino")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", default="1,4")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--runs", type=int, default=20, help="batches per arm per round")
    p.add_argument("--json", type=Path)
    p.add_argument("--agreement", action="store_true", help="only the top-1 agreement table")
    opts = p.parse_args(argv)
    engines = [e for e in opts.engines.split(",") if e]
    if set(engines) - set(ENGINES) or "ort" not in engines:
        p.error(f"--engines: ort and any of {', '.join(ENGINES)}")
    source = versions(opts.model_repository / opts.model)[0].path.parent
    files = {"fp32": source / MODEL_FILE, "int8": opts.int8_file or source / INT8_FILE}
    if opts.agreement:
        print(agreement(files, engines))
        return 0
    results = {}
    for threads in map(int, opts.threads.split(",")):
        for batch in map(int, opts.batch.split(",")):
            results[(threads, batch)] = measure(
                files, engines, threads, batch, opts.rounds, opts.runs
            )
            print(f"threads {threads} batch {batch}: done", flush=True)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\n{opts.model}, {opts.rounds} rounds of {opts.runs} batches per arm, ABAB; "
          f"int8 file {files['int8']}; load average at the end {load}")  # fmt: skip
    print(table(results))
    if opts.json:
        rows = {f"{t}x{b}": arms for (t, b), arms in results.items()}
        opts.json.write_text(json.dumps({"results": rows, "load_average": load}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
