"""`imgclf bench --variants fp32,int8 --start-server`: the precision variants of one model,
served side by side by one server and measured in alternation, each against the first.

The run builds a temporary repository that holds the model once per variant, named
``<model>_<variant>``: each copy has the version folder's ``model.onnx`` and
``model.int8.onnx`` (or the file ``--int8-file`` names: one that failed the accuracy gate
measures speed only, and the report says so), and a config.json whose ``precision`` forces
that variant (docs/models.md). One `imgclf serve` serves them all. Every round measures every
load point on every variant in turn (A B A B: each sees the same background load), each
through the same runner as a plain run (`runner.execute`, the server's precision checked in
ListModels). The report gives, per load point and variant, the medians of images/s, p50, p99
and server CPU per image, and the ratios to the first variant: the median of the per-round
ratios and their range. The machine's load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from imgclf.client.bench import stats
from imgclf.client.bench.ratios import ms_per_image
from imgclf.client.bench.report import fmt, table
from imgclf.repolayout import CONFIG_FILE, INT8_FILE, MODEL_FILE, versions

PRECISIONS = {"fp32": "float", "int8": "int8"}
"""Variant -> the config.json ``precision`` that forces it."""
RATIO_KEYS = ("images_per_s", "p50_ms", "p99_ms", "cpu_ms_per_image")
STAGE_KEYS = ("batch", "preprocess_ms_per_image", "inference_ms_per_image")
"""From the server's /metrics: mean batch size, preprocess and inference ms per image (wall
time in the server's threads: on busy cores it includes waiting for a core)."""


def parse_variants(text: str) -> list[str]:
    """``fp32,int8`` -> ["fp32", "int8"]: two or more known variants, no repeats."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if len(values) < 2 or len(set(values)) != len(values) or set(values) - set(PRECISIONS):
        raise argparse.ArgumentTypeError(
            f"two or more of {', '.join(PRECISIONS)}, comma-separated: {text!r}"
        )
    return values


def check_args(args: argparse.Namespace) -> None:
    """What a variants run cannot combine with (ValueError)."""
    if not args.start_server:
        raise ValueError("--variants serves its own repository: add --start-server")
    if args.limit or args.limit_only or args.floor or args.perf_analyzer_data or args.model_path:
        raise ValueError(
            "--variants measures served points only: drop --limit, --limit-only, --floor, "
            "--perf-analyzer-data and --model-path"
        )


def gate_of(path: Path) -> dict | None:
    """The accuracy gate an INT8 file records in its metadata (None: none recorded)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map.get("accuracy_gate")
    return json.loads(raw) if raw else None


def source_files(model_dir: Path, int8_file: Path | None = None) -> dict[str, Path]:
    """The files the variants are served from: the newest version's ``model.onnx``, its
    ``model.int8.onnx`` or `int8_file`, its config.json (which may be absent)."""
    found = versions(model_dir)
    if not found:
        raise FileNotFoundError(f"no model version in {model_dir}")
    source = found[0].path.parent
    return {
        MODEL_FILE: source / MODEL_FILE,
        INT8_FILE: int8_file or source / INT8_FILE,
        CONFIG_FILE: source / CONFIG_FILE,
    }


def make_repository(
    root: Path, model_dir: Path, tags: list[str], int8_file: Path | None = None
) -> dict[str, str]:
    """`root`/<model>_<tag>/<version>/ for each tag, with the newest version's files and a
    config.json (the model's own, if any) forcing the tag's precision; returns tag -> model
    name. FileNotFoundError when a variant's file is missing."""
    files = source_files(model_dir, int8_file)
    source = files[MODEL_FILE].parent
    if not files[MODEL_FILE].is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {source}: no fp32 variant to compare with")
    if "int8" in tags and not files[INT8_FILE].is_file():
        raise FileNotFoundError(f"no {INT8_FILE} in {source}; give --int8-file")
    own = model_dir / CONFIG_FILE
    base = json.loads(own.read_text()) if own.is_file() else {}
    names = {}
    for tag in tags:
        name = f"{model_dir.name}_{tag}"
        folder = root / name / source.name
        folder.mkdir(parents=True)
        for dest, src in files.items():
            if src.is_file():
                shutil.copy(src, folder / dest)
        (root / name / CONFIG_FILE).write_text(json.dumps({**base, "precision": PRECISIONS[tag]}))
        names[tag] = name
    return names


def headline(point: dict) -> dict[str, float | None]:
    """One measured point as the four numbers compared."""
    s, server = point["summary"], point.get("server") or {}
    return {
        "images_per_s": s["throughput_ips"],
        "p50_ms": s["latency_ms"]["p50"],
        "p99_ms": s["latency_ms"]["p99"],
        "cpu_ms_per_image": ms_per_image(point)[1],
        "batch": server.get("mean_batch_size"),
        "preprocess_ms_per_image": server.get("preprocess_ms_per_image"),
        "inference_ms_per_image": server.get("inference_ms_per_image"),
    }


def compare(rounds: list[dict[str, list[dict]]], tags: list[str]) -> list[dict]:
    """`rounds`: per round, tag -> that variant's measured points (same load points, same
    order). Per load point and tag: medians over the rounds and, against the first tag, each
    round's ratio and their median."""
    base = tags[0]
    out = []
    for i, label in enumerate(p["load"] for p in rounds[0][base]):
        for tag in tags:
            own = [headline(r[tag][i]) for r in rounds]
            ref = [headline(r[base][i]) for r in rounds]
            row: dict = {"load": label, "variant": tag, "rounds": own}
            for key in STAGE_KEYS:
                row[key] = stats.median([h[key] for h in own])
            for key in RATIO_KEYS:
                row[key] = stats.median([h[key] for h in own])
                per = [
                    a[key] / b[key] if a[key] is not None and b[key] else None
                    for a, b in zip(own, ref, strict=True)
                ]
                row[f"{key}_ratio"] = stats.median(per)
                row[f"{key}_ratios"] = per
            out.append(row)
    return out


def _range(values: list[float | None], spec: str = ".2f") -> str:
    vals = [v for v in values if v is not None]
    return f"{min(vals):{spec}}..{max(vals):{spec}}" if len(vals) > 1 else "-"


def text(result: dict) -> str:
    """The comparison table and its header lines."""
    tags, rows = result["variants"], result["comparison"]
    head = [
        "load", "variant", "img/s", "img/s range", "p50 ms", "p99 ms", "cpu ms/img",
        f"img/s /{tags[0]}", "range", f"p50 /{tags[0]}", "range", f"p99 /{tags[0]}",
        f"cpu/img /{tags[0]}", "range",
    ]  # fmt: skip
    body = [
        [r["load"], r["variant"], fmt(r["images_per_s"]),
         _range([h["images_per_s"] for h in r["rounds"]], ".1f"), fmt(r["p50_ms"], ".2f"),
         fmt(r["p99_ms"], ".2f"), fmt(r["cpu_ms_per_image"], ".2f"),
         fmt(r["images_per_s_ratio"], ".2f"), _range(r["images_per_s_ratios"]),
         fmt(r["p50_ms_ratio"], ".2f"), _range(r["p50_ms_ratios"]),
         fmt(r["p99_ms_ratio"], ".2f"), fmt(r["cpu_ms_per_image_ratio"], ".2f"),
         _range(r["cpu_ms_per_image_ratios"])]
        for r in rows
    ]  # fmt: skip
    gate = result.get("int8_gate")
    note = (
        "none recorded (speed only)" if gate is None
        else "passed" if gate.get("passed") else "FAILED: speed only, not a model to serve"
    )  # fmt: skip
    stages = [
        [r["load"], r["variant"], fmt(r["batch"], ".2f"), fmt(r["cpu_ms_per_image"], ".2f"),
         fmt(r["preprocess_ms_per_image"], ".2f"), fmt(r["inference_ms_per_image"], ".2f")]
        for r in rows
    ]  # fmt: skip
    load = result["load_average"]
    return "\n".join([
        f"\nvariants of {result['model']}: {', '.join(tags)}, {result['input']} input, "
        f"{result['rounds_run']} rounds alternating the variants; ratios are per round, "
        f"median and range; load average {load['start']} at the start, {load['end']} at the end",
        *([f"int8 file: {result['int8_file']}, accuracy gate: {note}"] if "int8" in tags else []),
        table(head, body),
        "\nserver stages per image (medians; preprocess and inference are wall time in the "
        "server's threads, from /metrics):",
        table(["load", "variant", "batch", "cpu ms", "preprocess ms", "inference ms"], stages),
    ])  # fmt: skip


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def execute(args: argparse.Namespace) -> dict:
    """Serve the variants from a temporary repository, measure them round after round."""
    from imgclf.client.bench import runner
    from imgclf.client.bench.launcher import serving

    check_args(args)
    tags, model_dir = args.variants, args.model_repository / args.model
    started = load_average()
    rounds: list[dict[str, list[dict]]] = []
    int8_file = source_files(model_dir, args.int8_file)[INT8_FILE] if "int8" in tags else None
    gate = gate_of(int8_file) if int8_file and int8_file.is_file() else None
    with tempfile.TemporaryDirectory(prefix="imgclf-variants-") as tmp:
        repo = Path(tmp)
        names = make_repository(repo, model_dir, tags, args.int8_file)
        with serving(repo, args.server_args, runner.say) as server:
            for r in range(args.rounds):
                rounds.append({})
                for tag in tags:  # A B A B: every variant once per round
                    runner.say(f"round {r + 1}/{args.rounds}: {names[tag]}")
                    one = argparse.Namespace(**{
                        **vars(args), "model": names[tag], "target": server.target,
                        "metrics_url": server.metrics_url, "start_server": False,
                        "rounds": 1, "model_repository": repo,
                    })  # fmt: skip
                    got = runner.execute(one)
                    served = (got.get("server_model") or {}).get("precision")
                    if served != tag:
                        raise RuntimeError(f"{names[tag]} is served as {served!r}, not {tag}")
                    rounds[-1][tag] = got["points"]
    return {
        "model": args.model, "variants": tags, "input": args.input, "rounds_run": len(rounds),
        "int8_file": str(int8_file),
        "int8_gate": gate, "load_average": {"start": started, "end": load_average()},
        "comparison": compare(rounds, tags), "rounds": rounds,
    }  # fmt: skip
