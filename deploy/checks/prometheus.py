"""Check the Prometheus and Grafana files with promtool (`make deploy-check-prometheus`).

- `promtool check config deploy/prometheus/prometheus.yml` (loads the rule files too),
- `promtool check rules deploy/prometheus/alerts.yml`,
- `promtool test rules deploy/prometheus/alerts.test.yml` (the alerts' unit tests),
- the Grafana dashboard: structure (deploy.checks.dashboard) and every query, with Grafana's
  variables filled in, parsed by promtool as the expression of a recording rule; the
  prometheus-adapter metricsQuery templates likewise.

promtool comes from Debian's `prometheus` package (`make deploy-tools`).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from deploy.checks import dashboard
from deploy.checks.common import DEPLOY, CheckError, load_yaml, rel, report, run, system_tool

PROMETHEUS_DIR = DEPLOY / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
ADAPTER_VALUES = DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml"


def promtool(*args: str) -> list[str]:
    result = run([system_tool("promtool", "prometheus"), *args])
    if result.returncode == 0:
        return []
    out = (result.stdout + result.stderr).strip().splitlines()
    return [
        f"promtool {args[0]} {args[1]} {rel(Path(args[-1]))}: {line}"
        for line in out
        if line.strip()
    ] or [f"promtool {' '.join(args)} exited {result.returncode}"]


def adapter_queries() -> list[tuple[str, str]]:
    """(name, PromQL) of each adapter rule, its templates filled in as the adapter does."""
    out = []
    for rule in load_yaml(ADAPTER_VALUES)["rules"]["custom"]:
        series = rule["seriesQuery"].split("{", 1)[0]
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"imgclf-.*"')
            .replace("<<.GroupBy>>", "pod")
        )
        out += [
            (f"adapter {rule['name']['as']} seriesQuery", rule["seriesQuery"]),
            (f"adapter {rule['name']['as']} metricsQuery", query),
        ]
    return out


def expressions_parse(exprs: list[tuple[str, str]]) -> Iterator[str]:
    """Parse each expression with promtool, as a recording rule; name the ones that fail."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, expr) in enumerate(exprs):
            path = Path(tmp) / f"expr{i}.yml"
            rules = {"groups": [{"name": "parse", "rules": [{"record": f"q{i}", "expr": expr}]}]}
            path.write_text(yaml.safe_dump(rules))
            if promtool("check", "rules", str(path)):
                yield f"{label}: not valid PromQL: {expr}"


def check_all() -> tuple[list[str], list[str]]:
    problems: list[str] = []
    problems += promtool("check", "config", str(CONFIG))
    problems += promtool("check", "rules", str(RULES))
    problems += promtool("test", "rules", str(RULE_TESTS))
    board = dashboard.load()
    problems += [f"{rel(dashboard.DASHBOARD)}: {p}" for p in dashboard.static_problems(board)]
    exprs = [
        (f"dashboard {q}", dashboard.substitute(q.expr, model="efficientnet_lite0"))
        for q in dashboard.queries(board)
    ]
    problems += expressions_parse(exprs + adapter_queries())
    checked = [
        rel(CONFIG),
        rel(RULES),
        rel(RULE_TESTS),
        f"{len(exprs)} dashboard queries",
        "adapter queries",
    ]
    return problems, checked


def main() -> int:
    try:
        problems, checked = check_all()
    except CheckError as exc:
        problems, checked = [str(exc)], []
    return report("prometheus (promtool)", problems, checked)


if __name__ == "__main__":
    sys.exit(main())
