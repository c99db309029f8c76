"""What class activation maps cost a server: plain requests to a model that explains against
plain requests to the same model with maps turned off, and explained requests against plain.

    python -m benchmarks.explain_cost --model efficientnet_lite0 [--explain 3] \
        [--concurrency 4] [--rounds 5] [--duration 4]

A temporary repository holds the model twice: ``<model>`` (maps on, the default) and
``<model>_noexplain`` (config.json ``explain: false``: the session is created from the file
as it is, without the feature output), the same version folder. One ``imgclf serve`` serves
both. Each round measures, one after the other on the same inputs (real JPEG photos) with
``imgclf bench``'s load runner: plain requests to ``<model>_noexplain`` (A), then
``imgclf bench --explain K`` on ``<model>``: its plain requests (B) and its explained requests
(C, each image's top K maps). Printed: each arm's images/s and cost per image (wall: 1000 /
img/s at that load; server CPU from /metrics), and per round the ratios B/A (plain requests
unchanged by the maps being available: about 1) and C/B (the cost of an explained image), with
their medians and ranges. The machine is shared: read the ranges before the medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from imgclf.client.bench import cli as bench_cli
from imgclf.client.bench import runner
from imgclf.client.bench.launcher import serving
from imgclf.client.bench.ratios import PLAIN, explain_arm, ms_per_image
from imgclf.repolayout import CONFIG_FILE, versions

OFF_SUFFIX = "_noexplain"
ARMS = ("A plain, maps off", "B plain, maps on", "C explained")


def make_repository(root: Path, model_dir: Path) -> str:
    """The temporary repository: the model's newest version twice, maps on and off."""
    source = versions(model_dir)[0].path.parent
    for name, explain in ((model_dir.name, True), (model_dir.name + OFF_SUFFIX, False)):
        shutil.copytree(source, root / name / source.name)
        config = model_dir / CONFIG_FILE
        values = json.loads(config.read_text()) if config.is_file() else {}
        (root / name / CONFIG_FILE).write_text(json.dumps({**values, "explain": explain}))
    return model_dir.name


def bench_args(
    server, model: str, repo: Path, opts: argparse.Namespace, explain: int = 0
) -> argparse.Namespace:  # fmt: skip
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args([
        "--target", server.target, "--metrics-url", server.metrics_url, "--model", model,
        "--model-repository", str(repo), "--concurrency", str(opts.concurrency),
        "--duration", str(opts.duration), "--warmup", str(opts.warmup),
        "--image-size", opts.image_size, "--explain", str(explain), "--rounds", "1",
    ])  # fmt: skip


def costs(point: dict) -> dict:
    s = point["summary"]
    wall, cpu = ms_per_image(point)
    return {
        "images_per_s": s["throughput_ips"],
        "wall_ms_per_image": wall,
        "server_cpu_ms_per_image": cpu,
        "p50_ms": s["latency_ms"]["p50"],
        "errors": sum(s["errors"].values()),
    }


def one_round(server, name: str, repo: Path, opts: argparse.Namespace) -> dict[str, dict]:
    """A, then B and C (imgclf bench --explain K: plain then explained)."""
    off = runner.execute(bench_args(server, name + OFF_SUFFIX, repo, opts))
    if (off.get("server_model") or {}).get("explain") is not False:
        raise RuntimeError(f"{name}{OFF_SUFFIX} is not served with maps off: {off['server_model']}")
    on = runner.execute(bench_args(server, name, repo, opts, opts.explain))
    by_arm = {p["arm"]: p for p in on["points"]}
    return {
        ARMS[0]: costs(off["points"][0]),
        ARMS[1]: costs(by_arm[PLAIN]),
        ARMS[2]: costs(by_arm[explain_arm(opts.explain)]),
    }


def spread(values: list[float], spec: str) -> str:
    low, high = min(values), max(values)
    return f"{statistics.median(values):{spec}} ({low:{spec}}..{high:{spec}})"


def report(rows: list[dict[str, dict]], opts: argparse.Namespace) -> str:
    lines = [
        f"\n{opts.model}, JPEG {opts.image_size}, {opts.concurrency} clients, "
        f"explain={opts.explain}, {opts.rounds} rounds A B C (shared, noisy machine: read the "
        "ranges)",
        "| arm | img/s | wall ms/img | server CPU ms/img | p50 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        got = [r[arm] for r in rows]
        cells = [spread([g[k] for g in got], ".2f") if None not in [g[k] for g in got] else "-"
                 for k in ("images_per_s", "wall_ms_per_image", "server_cpu_ms_per_image",
                           "p50_ms")]  # fmt: skip
        lines.append(f"| {arm} | {' | '.join(cells)} | {sum(g['errors'] for g in got)} |")
    lines += ["", "| ratio (per round) | wall ms/img | server CPU ms/img |", "|---|---|---|"]
    for label, (a, b) in (("B/A: plain, maps on / off", ARMS[:2]),
                          ("C/B: explained / plain", ARMS[1:])):  # fmt: skip
        cells = []
        for key in ("wall_ms_per_image", "server_cpu_ms_per_image"):
            pairs = [(r[a][key], r[b][key]) for r in rows]
            if any(x is None or y is None for x, y in pairs):
                cells.append("-")
                continue
            ratios = [y / x for x, y in pairs]
            cells.append(f"{spread(ratios, '.3f')}: {', '.join(f'{q:.3f}' for q in ratios)}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--model-repository", type=Path, default=Path("models"))
    p.add_argument("--explain", type=int, default=3, help="maps per explained image (top K)")
    p.add_argument("--image-size", default="0.3mp")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--server-args", default="")
    p.add_argument("--json", type=Path)
    opts = p.parse_args(argv)
    if opts.explain < 1:
        p.error("--explain must be >= 1")
    rows: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="imgclf-explain-cost-") as tmp:
        repo = Path(tmp)
        name = make_repository(repo, opts.model_repository / opts.model)
        with serving(repo, opts.server_args) as server:
            for r in range(opts.rounds):
                rows.append(one_round(server, name, repo, opts))
                print(f"round {r + 1}: {json.dumps(rows[-1])}", flush=True)
    print(report(rows, opts))
    if opts.json:
        opts.json.write_text(json.dumps({"rounds": rows, "options": vars(opts)}, default=str,
                                        indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
