"""Printing a benchmark: the limit table, the served table (with served/limit), the server's
stage breakdown; the JSON file; the plot (matplotlib, imported only when asked for)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from imgclf.client.bench import BENCH_EXTRA, MissingDependency


def fmt(value: object, spec: str = ".1f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]  # fmt: skip

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def vs_limit(
    summary: dict, limit: dict | None, server: dict | None = None
) -> dict[str, float | None]:
    """One point against the limit: served / limit (images/s), p50 - limit p50 (ms), and,
    when the server's CPU use is known, images per server CPU-second against the limit's
    images per CPU-second (the same ratio with background load on the cores factored out)."""
    ips = summary["throughput_ips"]
    cores = (server or {}).get("server_cpu_cores")
    per_cpu = ips / cores if cores else None
    out: dict[str, float | None] = {
        "served_over_limit": None, "p50_minus_limit_p50_ms": None,
        "images_per_server_cpu_s": per_cpu, "per_cpu_over_limit": None,
    }  # fmt: skip
    if limit:
        lim, lim_cpu = limit["images_per_s"], limit.get("images_per_cpu_s")
        out["served_over_limit"] = ips / lim if lim else None
        out["p50_minus_limit_p50_ms"] = summary["latency_ms"]["p50"] - limit["p50_ms"]
        out["per_cpu_over_limit"] = per_cpu / lim_cpu if per_cpu and lim_cpu else None
    return out


def limit_table(limit: dict) -> str:
    rows = [
        [r["config"], r["description"], fmt(r["images_per_s"]),
         fmt(r["call_latency_ms"]["p50"], ".2f"), fmt(r["call_latency_ms"]["p99"], ".2f"),
         fmt(r.get("images_per_cpu_s"))]
        for r in limit["configs"]
    ]  # fmt: skip
    head = ["config", "processes x intra-op threads", "img/s", "call p50 ms", "call p99 ms",
            "img/cpu-s"]  # fmt: skip
    rounds = f" (median of {len(limit['rounds'])} rounds)" if limit.get("rounds") else ""
    return (
        f"{table(head, rows)}\n"
        f"limit: {fmt(limit['images_per_s'])} img/s ({limit['best_config']}); "
        f"single-image p50 {fmt(limit['p50_ms'], '.2f')} ms ({limit['p50_config']}); "
        f"{fmt(limit.get('images_per_cpu_s'))} img per CPU-second "
        f"({limit.get('best_cpu_config')}){rounds}"
    )


def errors_text(errors: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in errors.items()) if errors else "0"


def spread(point: dict) -> str:
    """The lowest..highest img/s of a point's rounds ('-' for a single round)."""
    rounds = [r["throughput_ips"] for r in point.get("rounds", [])]
    return f"{fmt(min(rounds))}..{fmt(max(rounds))}" if len(rounds) > 1 else "-"


def served_table(points: list[dict], limit: dict | None) -> str:
    rows = []
    for p in points:
        s, v = p["summary"], p["vs_limit"]
        lat = s["latency_ms"]
        rows.append([
            p["load"], fmt(s["throughput_rps"]), fmt(s["throughput_ips"]), spread(p),
            fmt(lat["p50"], ".2f"), fmt(lat["p90"], ".2f"), fmt(lat["p99"], ".2f"),
            errors_text(s["errors"]),
            fmt(v["served_over_limit"], ".2f"), fmt(v["p50_minus_limit_p50_ms"], "+.2f"),
            fmt(v.get("images_per_server_cpu_s")), fmt(v.get("per_cpu_over_limit"), ".2f"),
            fmt(s["client_cpu_cores"], ".2f"),
        ])  # fmt: skip
    head = ["load", "req/s", "img/s", "img/s range", "p50 ms", "p90 ms", "p99 ms", "errors",
            "served/limit", "p50-limit_p50 ms", "img/server-cpu-s", "per-cpu/limit",
            "client cores"]  # fmt: skip
    return table(head, rows)


def stage_table(points: list[dict]) -> str | None:
    rows = []
    for p in points:
        s = p["server"]
        if not s:
            continue
        rows.append([
            p["load"], fmt(s.get("mean_batch_size"), ".2f"),
            fmt(s.get("queue_ms_per_image"), ".2f"), fmt(s.get("preprocess_ms_per_image"), ".2f"),
            fmt(s.get("compute_input_ms_per_batch"), ".2f"),
            fmt(s.get("inference_ms_per_batch"), ".2f"),
            fmt(s.get("inference_ms_per_image"), ".2f"),
            fmt(s.get("compute_output_ms_per_request"), ".2f"),
            fmt(s.get("request_ms_per_request"), ".2f"), fmt(s.get("server_cpu_cores"), ".2f"),
        ])  # fmt: skip
    if not rows:
        return None
    head = ["load", "batch", "queue/img", "preproc/img", "input/batch", "infer/batch",
            "infer/img", "output/req", "request", "server cores"]  # fmt: skip
    return "server stages (mean ms, from /metrics deltas):\n" + table(head, rows)


def floor_table(points: list[dict]) -> str | None:
    rows = [
        [p["load"], fmt(f["throughput_rps"]), fmt(f["p50_ms"], ".2f"), fmt(f["p99_ms"], ".2f"),
         str(f["errors"]), fmt(f["served_over_floor"], ".2f"),
         fmt(f["p50_minus_floor_ms"], "+.2f"), fmt(f.get("server_cpu_ms_per_request"), ".2f"),
         fmt(f.get("served_cpu_ms_per_request"), ".2f"), fmt(f["client_cpu_cores"], ".2f")]
        for p in points if (f := p.get("floor"))
    ]  # fmt: skip
    if not rows:
        return None
    return table(["load", "req/s", "p50 ms", "p99 ms", "errors", "served/floor",
                  "p50-floor_p50 ms", "floor cpu ms/req", "served cpu ms/req", "client cores"],
                 rows)  # fmt: skip


def explain_table(costs: list[dict]) -> str | None:
    """Plain and explained ms per image (wall: 1000 / img/s at that load; server CPU), and
    explained/plain: median (lowest..highest round)."""

    def cell(spread: dict | None, spec: str) -> str:
        if not spread:
            return "-"
        low, high = fmt(spread["min"], spec), fmt(spread["max"], spec)
        return f"{fmt(spread['median'], spec)} ({low}..{high})"

    rows = []
    for c in costs:
        ms, ratio = c["ms_per_image"], c["explained_over_plain"]
        for kind, what in (("wall", "wall ms/img"), ("cpu", "server cpu ms/img")):
            if kind in ratio:
                plain, explained = ms["plain"].get(kind), ms["explained"].get(kind)
                rows.append([c["load"], what, cell(plain, ".2f"), cell(explained, ".2f"),
                             cell(ratio[kind], ".3f")])  # fmt: skip
    if not rows:
        return None
    return table(["load", "cost", "plain", "explained", "explained/plain"], rows)


def write_json(path: Path, report: dict) -> None:
    def default(o: object) -> object:
        if hasattr(o, "item"):
            return o.item()
        return str(o)

    path.write_text(json.dumps(report, indent=2, default=default, allow_nan=True) + "\n")


def plot(path: Path, report: dict) -> None:
    """Throughput and latency against concurrency (closed loop) or offered rate (open loop)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency(f"--plot needs matplotlib: {BENCH_EXTRA}") from None
    points = [p for p in report["points"] if p["kind"] == "closed"]
    xkey, xlabel = "concurrency", "concurrency (closed loop)"
    if not points:
        points = [p for p in report["points"] if p["kind"] == "open"]
        xkey, xlabel = "rate", "offered rate, req/s (open loop)"
    x = [p[xkey] for p in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(x, [p["summary"]["throughput_ips"] for p in points], "o-", label="served")
    limit = report.get("limit")
    if limit:
        ax1.axhline(limit["images_per_s"], color="grey", ls="--", label="limit (no server)")
    ax1.set(xlabel=xlabel, ylabel="images/s", title="throughput")
    ax1.set_ylim(bottom=0)
    for q in ("p50", "p99"):
        ax2.plot(x, [p["summary"]["latency_ms"][q] for p in points], "o-", label=q)
    if limit:
        ax2.axhline(limit["p50_ms"], color="grey", ls="--", label="limit p50 (1 image)")
    ax2.set(xlabel=xlabel, ylabel="ms", title="latency")
    for ax in (ax1, ax2):
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
        ax.legend()
        ax.grid(alpha=0.3)
        if xkey == "concurrency" and len(x) > 1 and min(x) > 0 and max(x) / min(x) >= 8:
            ax.set_xscale("log", base=2)
            ax.set_xticks(x, [str(v) for v in x])
    inp = report["inputs"]
    what = f"JPEG {inp['size']}" if inp["kind"] == "jpeg" else f"tensors (photos at {inp['size']})"
    fig.suptitle(f"{report['model']['name']}: {report['api']} API, {what}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def text(result: dict) -> str:
    """Everything a run prints: a header, the limit, the served table, the server stages."""
    inp = result["inputs"]
    photos = f"{len(inp['photos'])} photos"
    if inp["kind"] == "jpeg":
        what = f"jpeg {inp['size']} ({photos}, mean {inp['mean_jpeg_bytes'] / 1e3:.0f} kB)"
    else:
        shape = "x".join(map(str, result["model"].get("input_shape", []))) or "?"
        kind = "tensor float32" if inp["kind"] == "tensor" else "pixels uint8"
        how = "preprocessed" if inp["kind"] == "tensor" else "resized and cropped"
        what = f"{kind} {shape} ({photos} at {inp['size']}, {how})"
    lines = [
        f"\nmodel {result['model']['name']} | {result['api']} API | input {what} | "
        f"{inp['images_per_request']} image(s)/request | "
        f"{result['client_processes']} client process(es) | {result['machine']['cores']} cores"
        + (f" | median of {result['rounds']} rounds" if result["rounds"] > 1 else
           " | one round: no spread measured (--rounds 3 gives medians and their range)")
    ]  # fmt: skip
    sm = result.get("server_model")
    if sm:
        lines.append(
            f"server: {result['target']} {sm['provider']} max_batch {sm['max_batch_size']}"
            + (" (started by the bench, default settings unless --server-args)"
               if result["started_server"] else "")
        )  # fmt: skip
    limit = result["limit"]
    if limit:
        draft = ", JPEG draft decoding" if limit.get("jpeg_draft") and inp["kind"] == "jpeg" else ""
        lines += [f"\nlimit (no server; same inputs and ONNX file, CPUExecutionProvider{draft}):",
                  limit_table(limit)]  # fmt: skip
    if result["points"]:
        lines += ["\nserved:", served_table(result["points"], limit)]
        stages = stage_table(result["points"])
        if stages:
            lines += ["", stages]
        ratios = result.get("protocol_ratios")
        if ratios:
            rows = [
                [r["load"], fmt(r["http_over_grpc"], ".3f"),
                 " ".join(fmt(x, ".3f") for x in r["rounds"])]
                for r in ratios
            ]  # fmt: skip
            lines += ["\nHTTP / gRPC throughput (measured one after the other, each round):",
                      table(["load", "median", "rounds"], rows)]  # fmt: skip
        costs = explain_table(result.get("explain_costs") or [])
        if costs:
            lines += ["\nexplained / plain cost per image (measured one after the other at "
                      "each point, each round; median, range of the rounds):", costs]  # fmt: skip
        floor = floor_table(result["points"])
        if floor:
            lines += ["\nfloor (a bare gRPC server, same options and requests, canned reply, "
                      "no model):", floor]  # fmt: skip
    return "\n".join(lines)
