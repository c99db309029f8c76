"""Cost as models are added: one server holding N copies of a model, the same total load
spread over all of them, N = 1, 2, 4 by default.

    python -m benchmarks.models                          # efficientnet_lite0, JPEG, 16 clients
    python -m benchmarks.models --counts 1,2,4,8 --model digits --concurrency 32

For each N the script starts `imgclf serve` on a repository of N copies of `--model` (the
same ONNX file under N names), then runs `--concurrency` closed-loop clients split evenly over
the N models at once (the bench's load generator, one client process per model), and prints
the total images/s, each model's median p50 and worst p99, and the server's resident memory
and thread count once loaded. Each model has its own sessions, queue and worker threads, so
this shows what a model costs idle (memory, threads) and whether busy models share the cores
without losing throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from benchmarks import REPO_ROOT, rss_bytes
from imgclf.client.bench import inputs, load, stats, wire
from imgclf.client.bench.launcher import serving
from imgclf.client.bench.stats import split_evenly
from imgclf.repolayout import versions


def repository_of_copies(source: Path, model: str, count: int, root: Path) -> list[str]:
    """`count` names for the newest version of `model`, each a folder with its own copy of the
    files (the server refuses links that leave its repository)."""
    (newest, *_) = versions(source / model)
    names = [f"{model}_{i}" for i in range(count)]
    for name in names:
        folder = root / name / "1"
        folder.mkdir(parents=True)
        for item in newest.path.parent.iterdir():
            if item.is_file():
                shutil.copyfile(item, folder / item.name)
    return names


def measure(args: argparse.Namespace, count: int) -> dict:
    photos = inputs.jpeg_images(inputs.parse_size(args.image_size))
    items = [data for _, data in photos]
    with tempfile.TemporaryDirectory(prefix="imgclf-models-") as tmp:
        names = repository_of_copies(args.model_repository, args.model, count, Path(tmp))
        with serving(Path(tmp), args.server_args) as server:
            pid = server.proc.pid
            idle_rss, idle_threads = rss_bytes(pid), len(os.listdir(f"/proc/{pid}/task"))
            connection = wire.Connection(server.target)
            shares = split_evenly(args.concurrency, count)
            runners = []
            for name in names:
                method, payloads = wire.build_payloads("imgclf", name, items, 1)
                runners.append(load.LoadRunner(connection, method, payloads, 1, 30.0))
            results: dict[str, dict] = {}

            def drive(name: str, runner: load.LoadRunner, clients: int) -> None:
                point = load.Point("closed", args.warmup, args.duration, concurrency=clients)
                got = runner.run(point, None, name)
                results[name] = stats.summarise(got.records, *got.window, 1).as_dict()

            threads = [
                threading.Thread(target=drive, args=(name, runner, clients))
                for name, runner, clients in zip(names, runners, shares, strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for runner in runners:
                runner.close()
    per_model = [results[n] for n in names]
    return {
        "models": count,
        "images_per_s": sum(s["throughput_ips"] for s in per_model),
        "p50_ms": statistics.median(s["latency_ms"]["p50"] for s in per_model),
        "p99_ms": max(s["latency_ms"]["p99"] for s in per_model),
        "errors": sum(sum(s["errors"].values()) for s in per_model),
        "idle_rss_mib": idle_rss / 2**20,
        "threads": idle_threads,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.models", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4],
                   help="model counts (1,2,4)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=16, help="clients in all")
    p.add_argument("--image-size", default="0.3mp")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--server-args", default="", help="extra `imgclf serve` arguments")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = []
    for count in args.counts:
        print(f"{count} model(s): starting the server and {args.concurrency} clients ...",
              file=sys.stderr, flush=True)  # fmt: skip
        rows.append(measure(args, count))
    print(f"\n{args.model}, JPEG {args.image_size}, {args.concurrency} clients in all")
    print("models  img/s  p50 ms  p99 ms  errors  idle RSS MiB  threads")
    for r in rows:
        print(f"{r['models']:>6}  {r['images_per_s']:5.1f}  {r['p50_ms']:6.1f}  {r['p99_ms']:6.1f}"
              f"  {r['errors']:>6}  {r['idle_rss_mib']:12.0f}  {r['threads']:>7}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
