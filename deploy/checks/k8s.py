"""Validate every Kubernetes manifest of deploy/k8s offline, strictly (`make deploy-check-k8s`).

- Each kustomization (base, overlays/gpu, kserve, training) is rendered (deploy.checks.kustomize)
  and every resulting object validated against the Kubernetes OpenAPI schemas bundled by
  kubernetes-validate in strict mode (an unknown field fails), for the oldest Kubernetes the
  manifests support (1.27: native gRPC probes) and the newest bundled one.
- Custom resources (ServiceMonitor, PrometheusRule, ServingRuntime, InferenceService,
  PyTorchJob) are validated with jsonschema against deploy/k8s/schemas/*.json: the CRD fields
  we use, with additionalProperties false everywhere, embedding the strict Kubernetes Container
  (or PodTemplateSpec) schema.
- The prometheus-adapter values are validated against their schema, and cross-checks tie the
  pieces together: selectors and named ports, probe ports, the drain arithmetic, HPA metrics
  served by adapter rules, PrometheusRule == deploy/prometheus/alerts.yml, KServe runtime/model,
  the rendezvous wiring of the multi-node training jobs (deploy.checks.training_jobs).

    python -m deploy.checks.k8s [--write-prometheusrule]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from kubernetes_validate.utils import ValidationError as K8sValidationError

from deploy.checks.common import DEPLOY, CheckError, load_yaml, rel, report
from deploy.checks.kustomize import RenderError, Resource, containers, files_of, render
from deploy.checks.training_jobs import check_training

K8S = DEPLOY / "k8s"
SCHEMAS = K8S / "schemas"
KUSTOMIZATIONS = (
    "base",
    "overlays/gpu",
    "kserve",
    "training",
    "training/pytorchjob",
    "training/pytorchjob-gpu",
    "training/indexed-job",
)
K8S_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUSRULE = K8S / "base" / "prometheusrule.yaml"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.json",
}
DRAIN_MARGIN_S = 1


# ---- schema validation -----------------------------------------------------------------------


@cache
def _k8s_definitions(version: str) -> referencing.Resource[Any]:
    schema_version = [
        v
        for v in kubernetes_validate.utils.all_versions()
        if kubernetes_validate.utils.major_minor(v)
        <= kubernetes_validate.utils.major_minor(version)
    ][-1]
    contents = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{schema_version}-local-strict/_definitions.json", version
    )
    return referencing.Resource.from_contents(contents)


@cache
def _crd_validator(filename: str, version: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / filename).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    registry: referencing.Registry[Any] = _k8s_definitions(version) @ referencing.Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(doc: dict[str, Any], version: str) -> list[str]:
    """Strict schema problems of one object for one Kubernetes version."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        validator = _crd_validator(CRD_SCHEMAS[key], version)  # type: ignore[index]
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
        ]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except K8sValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"]
    except SchemaNotFoundError as e:
        return [e.message]
    return []


def validate_resources(resources: list[Resource]) -> Iterator[str]:
    for r in resources:
        for version in K8S_VERSIONS:
            for err in schema_errors(r.doc, version):
                short = kubernetes_validate.utils.major_minor(version)
                yield f"{r.describe()} [k8s {short}]: {err}"


# ---- cross-checks ----------------------------------------------------------------------------


def _by_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r.kind == kind]


def _subset(small: dict[str, str] | None, big: dict[str, str] | None) -> bool:
    return bool(small) and all((big or {}).get(k) == v for k, v in (small or {}).items())


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", []) if "name" in e}


def _seconds(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def check_serving(resources: list[Resource], where: str) -> Iterator[str]:
    """Selectors, ports, probes, drain timing and autoscaling of a serving kustomization."""
    deployments = _by_kind(resources, "Deployment")
    if len(deployments) != 1:
        yield f"{where}: expected one Deployment, found {len(deployments)}"
        return
    dep = deployments[0].doc
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    if not _subset(dep["spec"]["selector"].get("matchLabels"), pod_labels):
        yield f"{where}: Deployment selector does not match its pod labels"
    container = spec["containers"][0]
    env = _env(container)
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    grpc_port = int(env.get("IMGCLF_GRPC_PORT", "8001"))
    metrics_port = int(env.get("IMGCLF_METRICS_PORT", "8002"))
    if env.get("IMGCLF_HOST") != "0.0.0.0":
        yield f"{where}: IMGCLF_HOST must be 0.0.0.0 in a pod (the default binds 127.0.0.1 only)"
    http_port = int(env.get("IMGCLF_HTTP_PORT", "8000"))
    if ports.get("http") != http_port:
        yield f"{where}: container port 'http' is {ports.get('http')}, IMGCLF_HTTP_PORT {http_port}"
    if ports.get("grpc") != grpc_port:
        yield f"{where}: container port 'grpc' is {ports.get('grpc')}, IMGCLF_GRPC_PORT {grpc_port}"
    if ports.get("http-metrics") != metrics_port:
        yield f"{where}: container port 'http-metrics' is not IMGCLF_METRICS_PORT {metrics_port}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container.get(probe, {}).get("grpc")
        if grpc is None or grpc.get("port") != grpc_port:
            yield f"{where}: {probe} must be a native grpc probe on port {grpc_port}"
    # Drain: preStop sleep, then SIGTERM -> pre-drain delay -> grace period, inside the budget.
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop = float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0.0
    pre_drain = _seconds(env.get("IMGCLF_PRE_DRAIN_DELAY_S", "0"), 0.0)
    grace = _seconds(env.get("IMGCLF_GRACE_PERIOD_S", "30"), 30.0)
    budget = spec.get("terminationGracePeriodSeconds", 30)
    needed = pre_stop + pre_drain + grace + DRAIN_MARGIN_S
    if budget < needed:
        yield (
            f"{where}: terminationGracePeriodSeconds {budget} < preStop {pre_stop:g} + "
            f"pre-drain {pre_drain:g} + grace {grace:g} + {DRAIN_MARGIN_S} margin"
        )
    live = container.get("livenessProbe", {})
    tolerated = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
    if tolerated <= pre_drain + grace:
        drain = pre_drain + grace
        yield f"{where}: liveness gives up after {tolerated}s, inside a drain of {drain:g}s"
    # Services, PDB, ServiceMonitor, HPA point at what exists.
    services = _by_kind(resources, "Service")
    for svc in services:
        if not _subset(svc.doc["spec"].get("selector"), pod_labels):
            yield f"{where}: {svc.describe()} selects no pod of the Deployment"
        for port in svc.doc["spec"]["ports"]:
            if port.get("targetPort") not in ports and port.get("targetPort") not in ports.values():
                target = port.get("targetPort")
                yield f"{where}: {svc.describe()} targetPort {target} is no container port"
            if port["name"] == "grpc" and port.get("appProtocol") != "kubernetes.io/h2c":
                yield f"{where}: {svc.describe()} port grpc needs appProtocol kubernetes.io/h2c"
    for pdb in _by_kind(resources, "PodDisruptionBudget"):
        if not _subset(pdb.doc["spec"]["selector"].get("matchLabels"), pod_labels):
            yield f"{where}: {pdb.describe()} selects no pod of the Deployment"
    for sm in _by_kind(resources, "ServiceMonitor"):
        selected = [
            s
            for s in services
            if _subset(
                sm.doc["spec"]["selector"].get("matchLabels"), s.doc["metadata"].get("labels")
            )
        ]
        if len(selected) != 1:
            yield f"{where}: {sm.describe()} selects {len(selected)} Services, not exactly one"
            continue
        names = {p["name"] for p in selected[0].doc["spec"]["ports"]}
        for ep in sm.doc["spec"]["endpoints"]:
            if ep.get("port") not in names:
                yield f"{where}: {sm.describe()} endpoint port {ep.get('port')} not on the Service"
    served = adapter_metric_names()
    for hpa in _by_kind(resources, "HorizontalPodAutoscaler"):
        ref = hpa.doc["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", deployments[0].name):
            yield f"{where}: {hpa.describe()} does not scale the Deployment"
        kinds = [m["type"] for m in hpa.doc["spec"]["metrics"]]
        if "Resource" not in kinds:
            yield f"{where}: {hpa.describe()} has no CPU (Resource) fallback metric"
        for m in hpa.doc["spec"]["metrics"]:
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in served:
                yield (
                    f"{where}: {hpa.describe()} metric {m['pods']['metric']['name']} is served "
                    f"by no prometheus-adapter rule ({rel(ADAPTER_VALUES)})"
                )
    requests = container.get("resources", {}).get("requests", {})
    limits = container.get("resources", {}).get("limits", {})
    if "nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests:
        if requests.get("nvidia.com/gpu") != limits.get("nvidia.com/gpu"):
            yield f"{where}: nvidia.com/gpu requests and limits must be equal"
        if env.get("IMGCLF_PROVIDERS") not in ("cuda", "tensorrt"):
            yield f"{where}: a GPU pod should set IMGCLF_PROVIDERS to cuda or tensorrt"


def check_kserve(resources: list[Resource], where: str) -> Iterator[str]:
    runtimes = {r.name: r.doc for r in _by_kind(resources, "ServingRuntime")}
    for isvc in _by_kind(resources, "InferenceService"):
        model = isvc.doc["spec"]["predictor"]["model"]
        runtime = runtimes.get(model.get("runtime", ""))
        if runtime is None:
            yield f"{where}: {isvc.describe()} runtime {model.get('runtime')} not defined here"
            continue
        formats = {f["name"] for f in runtime["spec"].get("supportedModelFormats", [])}
        if model["modelFormat"]["name"] not in formats:
            yield f"{where}: {isvc.describe()} model format not supported by its runtime"
        if model.get("protocolVersion") not in runtime["spec"].get("protocolVersions", []):
            yield f"{where}: {isvc.describe()} protocolVersion not offered by the runtime"
        container = runtime["spec"]["containers"][0]
        args = dict(a[2:].split("=", 1) for a in container.get("args", []) if "=" in a)
        port = int(args.get("grpc-port", "8001"))
        for source in (container, model):
            h2c = [p for p in source.get("ports", []) if p.get("name") == "h2c"]
            if not h2c or h2c[0]["containerPort"] != port:
                yield f"{where}: gRPC port must be named h2c and be --grpc-port {port}"
        http_port = int(args.get("http-port", "8000"))
        http1 = [p for p in container.get("ports", []) if p.get("name") == "http1"]
        if "v2" in runtime["spec"].get("protocolVersions", []) and (
            not http1 or http1[0]["containerPort"] != http_port
        ):
            yield f"{where}: the REST port must be named http1 and be --http-port {http_port}"
        if args.get("model-repository") != "/mnt/models":
            yield f"{where}: the runtime must serve KServe's /mnt/models"


def check_workload_images(resources: list[Resource], where: str) -> Iterator[str]:
    for r in resources:
        for c in containers(r.doc):
            if ":" not in c.get("image", "").rsplit("/", 1)[-1] and "@" not in c.get("image", ""):
                yield f"{where}: {r.describe()} container {c.get('name')} image has no tag"


def adapter_metric_names() -> set[str]:
    values = load_yaml(ADAPTER_VALUES)
    return {rule.get("name", {}).get("as", "") for rule in values["rules"]["custom"]}


def check_adapter_values() -> Iterator[str]:
    schema = json.loads((SCHEMAS / "prometheus-adapter-values.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for e in validator.iter_errors(load_yaml(ADAPTER_VALUES)):
        at = "/".join(map(str, e.absolute_path)) or "(root)"
        yield f"{rel(ADAPTER_VALUES)}: {at}: {e.message}"
    for rule in load_yaml(ADAPTER_VALUES)["rules"]["custom"]:
        for needed in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            if needed not in rule["metricsQuery"]:
                yield f"{rel(ADAPTER_VALUES)}: metricsQuery lacks {needed}"


def expected_prometheusrule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "imgclf",
            "labels": {"app.kubernetes.io/name": "imgclf", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": load_yaml(ALERTS)["groups"]},
    }


def write_prometheusrule() -> None:
    header = (
        "# Generated from deploy/prometheus/alerts.yml by\n"
        "#   python -m deploy.checks.k8s --write-prometheusrule\n"
        "# (make deploy-check fails when the two differ). Edit alerts.yml, not this file.\n"
    )
    body = yaml.safe_dump(expected_prometheusrule(), sort_keys=False, width=100)
    PROMETHEUSRULE.write_text(header + body)


def check_prometheusrule() -> Iterator[str]:
    if load_yaml(PROMETHEUSRULE) != expected_prometheusrule():
        yield (
            f"{rel(PROMETHEUSRULE)} differs from {rel(ALERTS)}: run "
            "`python -m deploy.checks.k8s --write-prometheusrule`"
        )


def check_coverage(kustomizations: list[Path]) -> Iterator[str]:
    """Every manifest under deploy/k8s is part of a checked kustomization."""
    covered: set[Path] = set()
    for k in kustomizations:
        covered |= files_of(k)
    for path in sorted(K8S.rglob("*.y*ml")):
        if path.resolve() == ADAPTER_VALUES.resolve():
            continue
        if path.resolve() not in covered:
            yield f"{rel(path)} belongs to no checked kustomization ({', '.join(KUSTOMIZATIONS)})"


def check_all(root: Path = K8S) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    checked: list[str] = []
    dirs = [root / k for k in KUSTOMIZATIONS]
    for directory in dirs:
        where = rel(directory)
        try:
            resources = render(directory)
        except (RenderError, CheckError, OSError, yaml.YAMLError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += validate_resources(resources)
        problems += check_workload_images(resources, where)
        if _by_kind(resources, "Deployment"):
            problems += check_serving(resources, where)
        if _by_kind(resources, "InferenceService"):
            problems += check_kserve(resources, where)
        problems += check_training(resources)
        checked.append(f"{where}: {len(resources)} objects")
    problems += check_adapter_values()
    problems += check_prometheusrule()
    problems += check_coverage(dirs)
    return problems, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write-prometheusrule",
        action="store_true",
        help="regenerate base/prometheusrule.yaml from alerts.yml",
    )
    args = parser.parse_args(argv)
    if args.write_prometheusrule:
        write_prometheusrule()
    try:
        problems, checked = check_all()
    except CheckError as exc:
        problems, checked = [str(exc)], []
    versions = "/".join(kubernetes_validate.utils.major_minor(v) for v in K8S_VERSIONS)
    return report(f"k8s (strict, Kubernetes {versions})", problems, checked)


if __name__ == "__main__":
    sys.exit(main())
