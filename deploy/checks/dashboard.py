"""The Grafana dashboard's queries, and what they become once Grafana fills in its variables.

Shared by the static check (deploy.checks.prometheus: every query is valid PromQL) and the live
test (tests/deploy/test_prometheus.py: every query returns data from a real Prometheus).
Panels under the row titled GPU_ROW are the GPU panels: they read only imgclf_gpu_* series,
which exist only where NVML sees a GPU.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.checks.common import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "imgclf.json"
GPU_ROW = "GPU (NVML)"
GPU_METRIC_PREFIX = "imgclf_gpu_"
VARIABLES = ("datasource", "instance", "model")
GRAFANA_BUILTINS = ("$__rate_interval", "$__interval", "$__range")


@dataclass(frozen=True)
class Query:
    row: str
    panel: str
    ref: str
    expr: str

    @property
    def gpu(self) -> bool:
        return self.row == GPU_ROW

    def __str__(self) -> str:
        return f"{self.row} / {self.panel} / {self.ref}"


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def queries(dashboard: dict[str, Any]) -> Iterator[Query]:
    """Every target expression, with the row its panel sits in (rows are flat, in order)."""
    row = ""
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            row = panel.get("title", "")
            nested = panel.get("panels", [])  # a collapsed row keeps its panels inside
            for inner in nested:
                for t in inner.get("targets", []):
                    yield Query(row, inner.get("title", ""), t.get("refId", ""), t.get("expr", ""))
            continue
        for t in panel.get("targets", []):
            yield Query(row, panel.get("title", ""), t.get("refId", ""), t.get("expr", ""))


def substitute(
    expr: str,
    *,
    model: str = ".*",
    instance: str = ".*",
    rate_interval: str = "10s",
    interval: str = "1s",
    range_: str = "1m",
) -> str:
    """The query Grafana sends: variables and built-in intervals filled in."""
    out = (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", interval)
        .replace("$__range", range_)
        .replace("$model", model)
        .replace("$instance", instance)
    )
    left = re.findall(r"\$\{?\w+", out)
    if left:
        raise ValueError(f"unsubstituted variables {left} in {expr!r}")
    return out


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(?:imgclf|process)_\w+", expr))
    return names | ({"up"} if re.search(r"\bup\s*\{", expr) else set())


def static_problems(dashboard: dict[str, Any]) -> Iterator[str]:
    """Structure: ids, variables, data sources, GPU panels reading GPU series only."""
    ids = [p.get("id") for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        yield "panel ids are not unique"
    names = [v["name"] for v in dashboard.get("templating", {}).get("list", [])]
    if sorted(names) != sorted(VARIABLES):
        yield f"template variables are {names}, expected {list(VARIABLES)}"
    found = list(queries(dashboard))
    if not found:
        yield "no queries"
    for q in found:
        if not q.expr.strip():
            yield f"{q}: empty expression"
        if q.gpu and not all(m.startswith(GPU_METRIC_PREFIX) for m in metric_names(q.expr)):
            yield f"{q}: a GPU panel may read only {GPU_METRIC_PREFIX}* series"
        if not q.gpu and any(m.startswith(GPU_METRIC_PREFIX) for m in metric_names(q.expr)):
            yield f"{q}: GPU series outside the {GPU_ROW!r} row"
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            continue
        ds = panel.get("datasource", {})
        if ds.get("uid") != "${datasource}":
            yield f"panel {panel.get('title')}: data source is not the $datasource variable"
    if not any(q.gpu for q in found):
        yield f"no GPU panels (row {GPU_ROW!r})"
