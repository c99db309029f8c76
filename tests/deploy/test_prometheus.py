"""A real Prometheus scraping a real imgclf: the shipped scrape config, alert rules, dashboard
queries and prometheus-adapter rules, all against live data.

Prometheus (Debian's package) runs on 127.0.0.1 with a config generated from
deploy/prometheus/prometheus.yml (target: the test server's metrics port, 1s scrapes, the
shipped alerts.yml), the bundled models serve real photos, and the series are read back
through Prometheus's HTTP API. Every query of the Grafana dashboard must return data; the GPU
panels (row "GPU (NVML)") must return data exactly when the server exports GPU series.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from deploy.checks import dashboard
from deploy.checks.prometheus import ADAPTER_VALUES, CONFIG, RULES
from imgclf.client import Client
from imgclf.client.bench.launcher import ServerProcess, free_port
from imgclf.metrics.prometheus import LATENCY_BUCKETS
from tests.deploy.conftest import require_binary

pytestmark = pytest.mark.slow

SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval becomes at this scrape interval
TRAFFIC_SECONDS = 6.0
MAX_REQUESTS = 240
CLIENT_THREADS = 3
POD = {"namespace": "imgclf-test", "pod": "imgclf-test-0"}  # as a ServiceMonitor would label
MODEL = "efficientnet_lite0"
LABELS = ("model", "version", "code")
START_TIMEOUT_S = 30.0


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        return r.read().decode()


def _samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """{labels: value} of one metric in Prometheus text format."""
    out = {}
    for m in re.finditer(rf"^{name}(?:\{{(.*?)\}})? (\S+)$", text, re.M):
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        out[labels] = float(m.group(2))
    return out


def _wait(what: str, predicate: Any, timeout: float, prom: Prometheus | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    detail = f"\n--- prometheus log ---\n{prom.log()[-4000:]}" if prom else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


@pytest.fixture(scope="module")
def prometheus(
    bundled_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(
        scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL, evaluation_interval="1s"
    )
    config["rule_files"] = [str(RULES)]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "imgclf"]
    job["static_configs"] = [
        {"targets": [f"127.0.0.1:{bundled_server.metrics_port}"], "labels": dict(POD)}
    ]
    config["scrape_configs"] = [job]
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log_path)

    def ready() -> bool:
        assert proc.poll() is None, f"prometheus exited {proc.returncode}:\n{prom.log()}"
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait("Prometheus to be ready", ready, START_TIMEOUT_S, prom)
        yield prom
    finally:
        if proc.poll() is None:
            proc.terminate()  # by PID: Popen signals exactly this process
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@dataclass
class Traffic:
    """What the test sent, and the moment Prometheus had scraped all of it."""

    ok: Counter[str] = field(default_factory=Counter)  # requests by model
    images: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model label, code)
    latencies: list[float] = field(default_factory=list)
    before: str = ""
    after: str = ""
    at: float = 0.0


def _send(
    server: ServerProcess,
    photos: list[bytes],
    traffic: Traffic,
    lock: threading.Lock,
    deadline: float,
    budget: list[int],
) -> None:
    with Client(server.target, timeout=30) as client:
        i = 0
        while time.monotonic() < deadline:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            i += 1
            model = "digits" if i % 5 == 0 else MODEL
            images = [photos[(i + k) % len(photos)] for k in range(1 + i % 3)]
            start = time.monotonic()
            reply = client.classify(images, model=model, top_k=3)
            elapsed = time.monotonic() - start
            assert reply.model == model and len(reply.results) == len(images)
            with lock:
                traffic.ok[model] += 1
                traffic.images[model] += len(images)
                traffic.latencies.append(elapsed)


def _bad_requests(server: ServerProcess, photos: list[bytes], traffic: Traffic) -> None:
    cases = [
        ({"images": [b"not an image"], "model": MODEL}, (MODEL, "INVALID_ARGUMENT")),
        ({"images": [b"\x89PNG broken"], "model": MODEL}, (MODEL, "INVALID_ARGUMENT")),
        ({"images": [photos[0]], "model": "no_such_model"}, ("", "NOT_FOUND")),
    ]
    with Client(server.target, timeout=30) as client:
        for kwargs, (model, code) in cases:
            with pytest.raises(grpc.RpcError) as info:
                client.classify(**kwargs)
            assert info.value.code().name == code
            traffic.errors[(model, code)] += 1


@pytest.fixture(scope="module")
def traffic(
    bundled_server: ServerProcess, prometheus: Prometheus, photos: dict[str, bytes]
) -> Traffic:
    def target_up() -> bool:
        active = prometheus.api("targets")["activeTargets"]
        return any(t["health"] == "up" and t["labels"]["job"] == "imgclf" for t in active)

    _wait("the imgclf target to be up", target_up, 20, prometheus)
    t = Traffic(before=_scrape(bundled_server))
    lock, budget = threading.Lock(), [MAX_REQUESTS]
    deadline = time.monotonic() + TRAFFIC_SECONDS
    pool = list(photos.values())
    threads = [
        threading.Thread(target=_send, args=(bundled_server, pool, t, lock, deadline, budget))
        for _ in range(CLIENT_THREADS)
    ]
    for th in threads:
        th.start()
    _bad_requests(bundled_server, pool, t)
    for th in threads:
        th.join(TRAFFIC_SECONDS + 60)
        assert not th.is_alive(), "a client thread did not finish"
    t.after = _scrape(bundled_server)
    # Prometheus has scraped everything once its counters equal the server's own (Prometheus
    # drops empty labels, e.g. model="" of requests for unknown models).
    expected = {
        frozenset((k, v) for k, v in labels if v): value
        for labels, value in _samples(t.after, "imgclf_requests_total").items()
    }

    seen: dict[frozenset[tuple[str, str]], float] = {}

    def caught_up() -> bool:
        seen.clear()
        for r in prometheus.query("imgclf_requests_total"):
            labels = frozenset((k, v) for k, v in r["metric"].items() if k in LABELS)
            seen[labels] = float(r["value"][1])
        return seen == expected

    try:
        _wait("Prometheus to scrape the final counters", caught_up, 15, prometheus)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserver: {expected}\nprometheus: {seen}") from None
    t.at = time.time()
    assert sum(t.ok.values()) >= 10, f"too little traffic: {t.ok}"
    return t


def _delta(t: Traffic, name: str, **labels: str) -> float:
    def total(text: str) -> float:
        return sum(v for k, v in _samples(text, name).items() if set(labels.items()) <= k)

    return total(t.after) - total(t.before)


# ---- the server's numbers, as Prometheus stores them


def test_counters_arrive_exactly(prometheus: Prometheus, traffic: Traffic) -> None:
    for model, n in traffic.ok.items():
        assert _delta(traffic, "imgclf_requests_total", model=model, code="OK") == n
        assert _delta(traffic, "imgclf_images_total", model=model) == traffic.images[model]
    for (model, code), n in traffic.errors.items():
        assert _delta(traffic, "imgclf_requests_total", model=model, code=code) == n
    got = prometheus.value(f'sum(imgclf_requests_total{{model="{MODEL}", code="OK"}})', traffic.at)
    direct = _samples(traffic.after, "imgclf_requests_total")
    assert got == sum(v for k, v in direct.items() if {("model", MODEL), ("code", "OK")} <= k)
    for model in traffic.ok:
        rate = prometheus.value(
            f'sum(rate(imgclf_requests_total{{model="{model}", code="OK"}}[{RATE_INTERVAL}]))',
            traffic.at,
        )
        assert rate > 0, model


def test_latency_quantiles_from_the_histograms(prometheus: Prometheus, traffic: Traffic) -> None:
    def quantile(q: float, metric: str = "imgclf_request_duration_seconds") -> float:
        return prometheus.value(
            f'histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{model="{MODEL}"}}'
            f"[{RATE_INTERVAL}])))",
            traffic.at,
        )

    p50, p95, p99 = quantile(0.5), quantile(0.95), quantile(0.99)
    assert 0 < p50 <= p95 <= p99 <= LATENCY_BUCKETS[-1], (p50, p95, p99)
    # Server time <= client time for every request, so the true p99 is at most the slowest
    # client-side latency; the histogram's estimate stays inside that value's bucket.
    slowest = max(traffic.latencies)
    bound = next((b for b in LATENCY_BUCKETS if b >= slowest), float("inf"))
    assert p99 <= bound, (p99, slowest)
    for stage in ("preprocess", "queue", "compute_input", "inference", "compute_output"):
        value = quantile(0.95, f"imgclf_{stage}_duration_seconds")
        assert 0 < value <= p99 * 2 + 0.01, (stage, value)
    mean_batch = prometheus.value(
        f'sum(rate(imgclf_batch_size_sum{{model="{MODEL}"}}[{RATE_INTERVAL}])) / '
        f'sum(rate(imgclf_batch_size_count{{model="{MODEL}"}}[{RATE_INTERVAL}]))',
        traffic.at,
    )
    assert 1 <= mean_batch <= 8


# ---- the Grafana dashboard


def _gpu_present(scrape: str) -> bool:
    return re.search(r"^imgclf_gpu_\w+\{", scrape, re.M) is not None


@pytest.mark.parametrize("model", [MODEL, ".*"], ids=["model=efficientnet_lite0", "model=All"])
def test_every_dashboard_query_returns_data(
    prometheus: Prometheus, traffic: Traffic, model: str
) -> None:
    board = dashboard.load()
    queries = list(dashboard.queries(board))
    gpu = _gpu_present(traffic.after)
    empty, unexpected = [], []
    for q in queries:
        expr = dashboard.substitute(q.expr, model=model, rate_interval=RATE_INTERVAL)
        result = prometheus.query(expr, traffic.at)
        if q.gpu and not gpu:
            if result:
                unexpected.append(f"{q}: data from {expr} although the server exports no GPU")
        elif not result:
            empty.append(f"{q}: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    assert not unexpected, "\n".join(unexpected)
    gpu_queries = [q for q in queries if q.gpu]
    assert gpu_queries, "the dashboard has no GPU panels"
    if not gpu:
        # Empty because there is no GPU, not by accident: the server exports no GPU series and
        # says why in its log.
        assert "imgclf_gpu_" not in "".join(
            line for line in traffic.after.splitlines() if not line.startswith("#")
        )
        assert prometheus.query('{__name__=~"imgclf_gpu_.*"}', traffic.at) == []


# ---- alerting rules


def _families(scrape: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\w+) ", scrape, re.M))


def _family_of(metric: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", metric)


def test_alert_rules_load_evaluate_and_name_real_metrics(
    prometheus: Prometheus, traffic: Traffic
) -> None:
    shipped = yaml.safe_load(RULES.read_text())
    n_rules = sum(len(g["rules"]) for g in shipped["groups"])
    groups = prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == n_rules

    def evaluated() -> bool:
        return all(
            r.get("lastEvaluation", "").startswith("20")
            for r in (r for g in prometheus.api("rules")["groups"] for r in g["rules"])
        )

    _wait("every rule to be evaluated", evaluated, 10, prometheus)
    for rule in (r for g in prometheus.api("rules")["groups"] for r in g["rules"]):
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # A healthy server under normal traffic raises no critical alert.
    critical = [
        a for a in prometheus.api("alerts")["alerts"] if a["labels"].get("severity") == "critical"
    ]
    assert not critical, critical
    # Every metric an alert reads is one the server declares (a typo would never fire).
    declared = _families(traffic.after) | {"up"}
    gpu = _gpu_present(traffic.after)
    for group in shipped["groups"]:
        for rule in group["rules"]:
            for metric in dashboard.metric_names(rule["expr"]):
                family = _family_of(metric).removesuffix("_total")
                if metric.startswith("imgclf_gpu_") and not gpu:
                    continue  # registered only when NVML finds a GPU
                assert family in {f.removesuffix("_total") for f in declared}, (
                    f"{rule['alert']} reads {metric}, which the server does not export"
                )


def test_live_scrape_passes_promtool(bundled_server: ServerProcess, traffic: Traffic) -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=_scrape(bundled_server),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- prometheus-adapter rules (the HPA's custom metrics)


def test_adapter_rules_yield_per_pod_metrics(prometheus: Prometheus, traffic: Traffic) -> None:
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    for rule in values["rules"]["custom"]:
        series = prometheus.api("series", **{"match[]": rule["seriesQuery"]})
        assert series, rule["seriesQuery"]
        for s in series:
            assert s["namespace"] == POD["namespace"] and s["pod"] == POD["pod"]
        name = rule["seriesQuery"].split("{", 1)[0]
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", name)
            .replace("<<.LabelMatchers>>", f'namespace="{POD["namespace"]}",pod=~"{POD["pod"]}"')
            .replace("<<.GroupBy>>", "pod")
        )
        result = prometheus.query(query, traffic.at)
        assert [r["metric"] for r in result] == [{"pod": POD["pod"]}], (query, result)
        # The pod's value is the sum of what the server exported once the traffic had ended
        # (every request answered: nothing in flight, nothing queued).
        exported = sum(_samples(traffic.after, name).values())
        assert float(result[0]["value"][1]) == exported == 0, (query, result, exported)


# ---- a request refused for its top_k is counted under its model and code


def test_a_request_rejected_for_its_top_k_is_counted(
    bundled_server: ServerProcess, photos: dict[str, bytes]
) -> None:
    before = _scrape(bundled_server)
    with Client(bundled_server.target, timeout=30) as client, pytest.raises(grpc.RpcError) as info:
        client.classify([next(iter(photos.values()))], model=MODEL, top_k=100000)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = _scrape(bundled_server)
    t = Traffic(before=before, after=after)
    assert _delta(t, "imgclf_requests_total", model=MODEL, code="INVALID_ARGUMENT") == 1
