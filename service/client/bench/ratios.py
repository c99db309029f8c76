"""Two kinds of request measured side by side in one run, point by point and round by round
(A then B at each point, every round: both see the same background load): HTTP against gRPC
(`--protocol grpc,http`), explained against plain requests (`--explain K`). Each round gives
one ratio; the median and the range of the rounds are reported."""

from __future__ import annotations

from imgclf.client.bench import stats

PLAIN = "plain"


def explain_arm(k: int) -> str:
    """The name of the explained requests' arm (the plain one is PLAIN)."""
    return f"explain={k}"


def _base(point: dict) -> str:
    """The load point's label without its arm ("c=4 grpc" -> "c=4")."""
    return point["load"].rsplit(" ", 1)[0]


def protocol_ratios(point_rounds: list[list[dict]]) -> list[dict]:
    """HTTP over gRPC throughput per load point: each round's ratio (the two measured one
    after the other) and their median."""
    out = []
    labels = [_base(p) for p in point_rounds[0] if p["protocol"] == "grpc"]
    for label in labels:
        ratios = []
        for points in point_rounds:
            by = {p["protocol"]: p["summary"]["throughput_ips"] for p in points
                  if _base(p) == label}  # fmt: skip
            if by.get("grpc"):
                ratios.append(by["http"] / by["grpc"])
        if ratios:
            out.append({"load": label, "http_over_grpc": stats.median(ratios),
                        "rounds": ratios})  # fmt: skip
    return out


def ms_per_image(point: dict) -> tuple[float | None, float | None]:
    """(wall ms per image: the inverse of the point's images/s; server CPU ms per image,
    when /metrics gave the server's CPU use)."""
    ips = point["summary"]["throughput_ips"]
    cores = (point.get("server") or {}).get("server_cpu_cores")
    wall = 1000.0 / ips if ips else None
    cpu = 1000.0 * cores / ips if ips and isinstance(cores, float) else None
    return wall, cpu


def _spread(values: list[float]) -> dict:
    return {"median": stats.median(values), "min": min(values), "max": max(values),
            "rounds": values}  # fmt: skip


def explain_costs(point_rounds: list[list[dict]]) -> list[dict]:
    """Per load point, the cost of an image explained and plain (wall ms per image at that
    load, and server CPU ms per image when known), each round's explained/plain ratio, and
    the medians and ranges over the rounds."""
    out = []
    labels = [_base(p) for p in point_rounds[0] if p.get("arm") == PLAIN]
    for label in labels:
        costs: dict[str, dict[str, list[float]]] = {PLAIN: {}, "explained": {}}
        ratios: dict[str, list[float]] = {}
        for points in point_rounds:
            by = {p["arm"]: ms_per_image(p) for p in points if _base(p) == label and p.get("arm")}
            plain = by.pop(PLAIN)
            (explained,) = by.values()
            for kind, a, b in zip(("wall", "cpu"), plain, explained, strict=True):
                if a is None or b is None:
                    continue
                costs[PLAIN].setdefault(kind, []).append(a)
                costs["explained"].setdefault(kind, []).append(b)
                ratios.setdefault(kind, []).append(b / a)
        out.append({
            "load": label,
            "ms_per_image": {arm: {k: _spread(v) for k, v in c.items()}
                             for arm, c in costs.items()},
            "explained_over_plain": {k: _spread(v) for k, v in ratios.items()},
        })  # fmt: skip
    return out
