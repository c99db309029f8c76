"""Memory and speed against the instance count: one model served with 1, 2, 4, 8, 16
instances, with the sessions sharing the version's weights and arena and without (the
former design), alternating the two (ABAB) in one run.

    python -m benchmarks.memory_instances                       # efficientnet_lite0
    python -m benchmarks.memory_instances --instances 8 --rounds 4
    python -m benchmarks.memory_instances --models 10 --instances 0 --designs shared

For each instance count, each round starts `imgclf serve --instances N` (auto when 0, solo
session as configured: on by default) once per design, the order of the designs swapped every
round, reads the server's resident memory once it serves (and imgclf_model_memory_bytes),
drives `--concurrency` closed-loop clients for `--duration` seconds (JPEG, the bench's load
generator), and reads the resident memory during the load (its peak, sampled every 50 ms) and
after it (what stays held). It prints every run, then per count each design's medians and the
shared/unshared ratio of images/s with its spread over the rounds. `--models M` serves M
copies of the model under M names (each its own version: its own sessions and weights), the
clients split over them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from benchmarks import REPO_ROOT, rss_bytes
from benchmarks.models import repository_of_copies
from imgclf.client.bench import inputs, load, scrape, stats, wire
from imgclf.client.bench.launcher import serving
from imgclf.client.bench.stats import split_evenly


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a local process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


NAN = float("nan")
DESIGNS = {"shared": "--share-weights", "unshared": "--no-share-weights"}


def drive(
    server_target: str, pid: int, names: list[str], items: list[bytes], args: argparse.Namespace
) -> dict:
    """`args.concurrency` clients split over `names` for `args.duration` seconds; the server's
    CPU time per image over the measured window (which the other tenants of a shared machine
    disturb far less than images/s)."""
    cores: list[float] = []
    connection = wire.Connection(server_target)
    results: dict[str, dict] = {}
    runners = []
    for name in names:
        method, payloads = wire.build_payloads("imgclf", name, items, 1)
        runners.append(load.LoadRunner(connection, method, payloads, 1, 60.0))

    def one(name: str, runner: load.LoadRunner, clients: int) -> None:
        point = load.Point("closed", args.warmup, args.duration, concurrency=clients)
        probe = functools.partial(cpu_seconds, pid) if name == names[0] else None
        got = runner.run(point, None, name, cpu_seconds=probe)
        results[name] = stats.summarise(got.records, *got.window, 1).as_dict()
        if "server_cpu_cores" in got.server:
            cores.append(float(got.server["server_cpu_cores"]))  # type: ignore[arg-type]

    shares = split_evenly(args.concurrency, len(names))
    threads = [
        threading.Thread(target=one, args=(name, runner, clients))
        for name, runner, clients in zip(names, runners, shares, strict=True)
        if clients
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for runner in runners:
        runner.close()
    got = list(results.values())
    images_per_s = sum(s["throughput_ips"] for s in got)
    return {
        "images_per_s": images_per_s,
        "errors": sum(sum(s["errors"].values()) for s in got),
        "cpu_ms_per_image": 1000 * cores[0] / images_per_s if cores and images_per_s else NAN,
    }


def measure(args: argparse.Namespace, instances: int, design: str, items: list[bytes]) -> dict:
    server_args = f"--instances {instances} {DESIGNS[design]} {args.server_args}"
    with tempfile.TemporaryDirectory(prefix="imgclf-memory-") as tmp:
        names = repository_of_copies(args.model_repository, args.model, args.models, Path(tmp))
        with serving(Path(tmp), server_args) as server:
            pid = server.proc.pid
            loaded = rss_bytes(pid)
            reported = scrape.by_label(
                scrape.fetch(server.metrics_url), "imgclf_model_memory_bytes", "model"
            )
            row = {"instances": instances, "design": design, "loaded_rss_mib": loaded / 2**20}
            row["model_memory_mib"] = sum(reported.values()) / 2**20
            if args.duration > 0:
                peak = [loaded]
                done = threading.Event()

                def sample() -> None:
                    while not done.wait(0.05):
                        peak[0] = max(peak[0], rss_bytes(pid))

                sampler = threading.Thread(target=sample)
                sampler.start()
                try:
                    row |= drive(server.target, pid, names, items, args)
                finally:
                    done.set()
                    sampler.join()
                row["peak_rss_mib"] = peak[0] / 2**20
                row["after_rss_mib"] = rss_bytes(pid) / 2**20
    return row


COLUMNS = (
    ("loaded_rss_mib", "RSS loaded MiB", ".0f"),
    ("model_memory_mib", "gauge MiB", ".0f"),
    ("peak_rss_mib", "peak RSS under load MiB", ".0f"),
    ("after_rss_mib", "RSS after load MiB", ".0f"),
    ("images_per_s", "img/s", ".1f"),
    ("cpu_ms_per_image", "server CPU ms/img", ".1f"),
)


def median_of(rows: list[dict], instances: int, design: str, key: str) -> float:
    values = [r[key] for r in rows if r["instances"] == instances and r["design"] == design]
    return statistics.median(values) if values else NAN


def print_summary(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.model} x {args.models} model(s), JPEG {args.image_size}, "
          f"{args.concurrency} clients, {args.duration:.0f} s a run")  # fmt: skip
    print("instances  design    " + "  ".join(title for _, title, _ in COLUMNS))
    for r in rows:
        cells = [format(r.get(key, NAN), fmt).rjust(len(title)) for key, title, fmt in COLUMNS]
        print(f"{r['instances']:>9}  {r['design']:<8}  " + "  ".join(cells))
    print("\nmedians over the rounds, shared | unshared; images/s ratio per round (min..max)")
    print("instances  " + "  ".join(title for _, title, _ in COLUMNS) + "  ratio")
    for n in args.instances:
        cells = [
            f"{median_of(rows, n, 'shared', key):{fmt}} | "
            f"{median_of(rows, n, 'unshared', key):{fmt}}".rjust(len(title))
            for key, title, fmt in COLUMNS
        ]
        shared = [r for r in rows if r["instances"] == n and r["design"] == "shared"]
        unshared = [r for r in rows if r["instances"] == n and r["design"] == "unshared"]
        ratios = [
            s["images_per_s"] / u["images_per_s"]
            for s, u in zip(shared, unshared, strict=False)
            if s.get("images_per_s") and u.get("images_per_s")
        ]
        ratio = (
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}..{max(ratios):.3f})"
            if ratios
            else "-"
        )
        print(f"{n:>9}  " + "  ".join(cells) + f"  {ratio}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_instances", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--models", type=int, default=1, help="copies of the model served at once")
    p.add_argument("--instances", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 2, 4, 8, 16], help="instance counts (0: auto)")  # fmt: skip
    p.add_argument("--designs", type=lambda s: s.split(","), default=list(DESIGNS),
                   help="shared, unshared or both (ABAB)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=2, help="runs of each design per count")
    p.add_argument("--concurrency", type=int, default=16, help="clients in all")
    p.add_argument("--image-size", default="0.3mp")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load (0: none)")
    p.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds of load before the measured window (the arena grows)",
    )
    p.add_argument("--server-args", default="", help="extra `imgclf serve` arguments")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    unknown = set(args.designs) - set(DESIGNS)
    if unknown:
        p.error(f"unknown design(s) {', '.join(sorted(unknown))}: shared, unshared")
    items = [data for _, data in inputs.jpeg_images(inputs.parse_size(args.image_size))]
    rows = []
    for n in args.instances:
        for round_ in range(args.rounds):
            order = args.designs if round_ % 2 == 0 else args.designs[::-1]
            for design in order:
                print(f"{n} instance(s), {design}, round {round_ + 1}: starting the server ...",
                      file=sys.stderr, flush=True)  # fmt: skip
                rows.append(measure(args, n, design, items))
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print_summary(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(r.get("errors") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
