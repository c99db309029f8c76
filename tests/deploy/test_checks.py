"""The offline deployment checks catch what they claim to (`make deploy-check` runs them on
the real files; here they meet broken copies)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.checks import compose, dashboard, dockerfile, k8s, kustomize, prometheus
from deploy.checks.common import REPO
from tests.deploy.conftest import require_binary

K8S_VERSION = "1.37.0"
WORKER_POD = ["spec", "pytorchReplicaSpecs", "Worker", "template", "spec"]


def _rendered(kind: str, where: str = "base") -> dict[str, Any]:
    resources = kustomize.render(k8s.K8S / where)
    return copy.deepcopy(next(r.doc for r in resources if r.kind == kind))


# ---- Kubernetes


def test_the_shipped_manifests_pass() -> None:
    problems, checked = k8s.check_all()
    assert problems == []
    assert len(checked) == len(k8s.KUSTOMIZATIONS)


@pytest.mark.parametrize(
    ("kind", "where", "path", "value"),
    [
        ("Deployment", "base", ["spec", "template", "spec", "containers", 0, "readinesProbe"], {}),
        ("Deployment", "base", ["spec", "replicas"], "2"),
        ("Service", "base", ["spec", "ports", 0, "appProtocoll"], "kubernetes.io/h2c"),
        ("HorizontalPodAutoscaler", "base", ["spec", "metrics", 0, "pods", "metrics"], {}),
        ("ServiceMonitor", "base", ["spec", "endpoints", 0, "intervall"], "15s"),
        ("ServiceMonitor", "base", ["spec", "endpoints", 0, "interval"], "15 seconds"),
        ("PrometheusRule", "base", ["spec", "groups", 0, "rules", 0, "severity"], "x"),
        ("ServingRuntime", "kserve", ["spec", "containers", 0, "imagee"], "imgclf"),
        ("ServingRuntime", "kserve", ["spec", "protocolVersions", 0], "grpc"),
        ("InferenceService", "kserve", ["spec", "predictor", "model", "port"], 8001),
        ("Job", "training", ["spec", "template", "spec", "restartPolicy"], 7),
        ("PyTorchJob", "training/pytorchjob", ["spec", "elasticPolicy", "rdzvBackend"], "tcp"),
        ("PyTorchJob", "training/pytorchjob", ["spec", "elasticPolicy", "nprocPerNode"], 1),
        ("PyTorchJob", "training/pytorchjob", ["spec", "pytorchReplicaSpecs", "Chief"], {}),
        ("PyTorchJob", "training/pytorchjob", ["spec", "nprocPerNode"], 4),
        ("PyTorchJob", "training/pytorchjob", [*WORKER_POD, "containers", 0, "name"], "train"),
        ("PyTorchJob", "training/pytorchjob", [*WORKER_POD, "containers", 0, "portz"], []),
        ("PyTorchJob", "training/pytorchjob", [*WORKER_POD, "volumes", 0, "emptyDir"], 1),
        ("Job", "training/indexed-job", ["spec", "completions"], "two"),
        ("Service", "training/indexed-job", ["spec", "publishNotReadyAdresses"], True),
    ],
)
def test_strict_schemas_reject_unknown_fields_and_bad_types(
    kind: str, where: str, path: list[Any], value: Any
) -> None:
    doc = _rendered(kind, where)
    assert k8s.schema_errors(doc, K8S_VERSION) == []
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert k8s.schema_errors(doc, K8S_VERSION), f"{kind} accepted {path} = {value!r}"


def _copy_k8s(tmp_path: Path) -> Path:
    root = tmp_path / "k8s"
    shutil.copytree(k8s.K8S, root)
    return root


def _edit(path: Path, edit: Any) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    edit(docs)
    path.write_text(yaml.safe_dump_all(docs))


def test_the_drain_must_fit_the_termination_grace_period(tmp_path: Path) -> None:
    root = _copy_k8s(tmp_path)

    def shorten(docs: list[Any]) -> None:
        docs[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30

    _edit(root / "base" / "deployment.yaml", shorten)
    problems, _ = k8s.check_all(root)
    assert any("terminationGracePeriodSeconds 30 < preStop 5" in p for p in problems), problems


def test_hpa_metrics_must_be_served_by_the_adapter(tmp_path: Path) -> None:
    root = _copy_k8s(tmp_path)

    def rename(docs: list[Any]) -> None:
        docs[0]["spec"]["metrics"][0]["pods"]["metric"]["name"] = "imgclf_queue_dept"

    _edit(root / "base" / "hpa.yaml", rename)
    problems, _ = k8s.check_all(root)
    assert any("imgclf_queue_dept is served by no prometheus-adapter rule" in p for p in problems)


def test_the_servicemonitor_must_name_a_service_port(tmp_path: Path) -> None:
    root = _copy_k8s(tmp_path)

    def rename(docs: list[Any]) -> None:
        docs[0]["spec"]["endpoints"][0]["port"] = "metrics"

    _edit(root / "base" / "servicemonitor.yaml", rename)
    problems, _ = k8s.check_all(root)
    assert any("endpoint port metrics not on the Service" in p for p in problems), problems


def test_kustomize_subset_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    root = _copy_k8s(tmp_path)
    gpu = root / "overlays" / "gpu"
    k = yaml.safe_load((gpu / "kustomization.yaml").read_text())
    broken = dict(k, commonLabels={"a": "b"})
    (gpu / "kustomization.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(kustomize.RenderError, match="unsupported keys"):
        kustomize.render(gpu)
    strategic = dict(k, patches=[{"target": {"kind": "Deployment"}, "patch": "spec: {}"}])
    (gpu / "kustomization.yaml").write_text(yaml.safe_dump(strategic))
    with pytest.raises(kustomize.RenderError, match="only JSON 6902"):
        kustomize.render(gpu)
    nothing = dict(k, patches=[{"target": {"kind": "StatefulSet"}, "patch": "[]"}])
    (gpu / "kustomization.yaml").write_text(yaml.safe_dump(nothing))
    with pytest.raises(kustomize.RenderError, match="matches no resource"):
        kustomize.render(gpu)


def test_a_json_patch_test_op_pins_the_entry_it_changes(tmp_path: Path) -> None:
    root = _copy_k8s(tmp_path)

    def reorder(docs: list[Any]) -> None:
        env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
        env.insert(0, {"name": "IMGCLF_LOG_LEVEL", "value": "INFO"})

    _edit(root / "base" / "deployment.yaml", reorder)
    with pytest.raises(kustomize.RenderError, match="test failed"):
        kustomize.render(root / "overlays" / "gpu")


def test_the_gpu_overlay_renders_a_gpu_pod() -> None:
    dep = _rendered("Deployment", "overlays/gpu")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["IMGCLF_PROVIDERS"] == "cuda" and env["IMGCLF_REQUIRE_GPU"] == "true"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"] == "imgclf:latest"
    hpa = _rendered("HorizontalPodAutoscaler", "overlays/gpu")
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "64"


def _set(doc: dict[str, Any], path: list[Any], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@pytest.mark.parametrize(
    ("where", "kind", "path", "value", "problem"),
    [
        ("pytorchjob", "PyTorchJob", ["spec", "elasticPolicy", "maxReplicas"], 3,
         "Worker replicas, minReplicas and maxReplicas differ"),
        ("pytorchjob", "PyTorchJob", ["spec", "elasticPolicy", "rdzvPort"], 29500,
         "rdzvPort 29500 is no port of the pytorch container"),
        ("pytorchjob", "PyTorchJob", [*WORKER_POD, "containers", 0, "args", 0], "torchrun -m x",
         "does not run `imgclf launch|torchrun ... imgclf train`"),
        ("indexed-job", "Job", ["spec", "parallelism"], 3,
         "completions and parallelism must both be --nnodes 2"),
        ("indexed-job", "Job", ["spec", "template", "spec", "subdomain"], "rdzv",
         "--rdzv-endpoint must be imgclf-train-indexed-0.rdzv:PORT"),
        ("indexed-job", "Service", ["spec", "publishNotReadyAddresses"], False,
         "must be headless and publish not-ready addresses"),
        ("indexed-job", "Service", ["spec", "ports", 0, "port"], 29500,
         "does not serve the rendezvous port 29400"),
    ],
)  # fmt: skip
def test_the_rendezvous_wiring_must_agree(
    tmp_path: Path, where: str, kind: str, path: list[Any], value: Any, problem: str
) -> None:
    root = _copy_k8s(tmp_path)
    for manifest in (root / "training" / where).glob("*.yaml"):
        docs = list(yaml.safe_load_all(manifest.read_text()))
        if docs and docs[0].get("kind") == kind:
            _edit(manifest, lambda d: _set(d[0], path, value))
    problems, _ = k8s.check_all(root)
    assert any(problem in p for p in problems), problems


def test_the_gpu_training_overlay_runs_one_process_per_gpu(tmp_path: Path) -> None:
    job = _rendered("PyTorchJob", "training/pytorchjob-gpu")
    container = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert job["spec"]["nprocPerNode"] == gpus == "4"
    assert "--device cuda" in container["args"][0] and container["image"] == "imgclf-train:latest"
    root = _copy_k8s(tmp_path)
    patch = root / "training" / "pytorchjob-gpu" / "pytorchjob-gpu.yaml"
    patch.write_text(patch.read_text().replace('value: "4"', 'value: "2"', 1))
    problems, _ = k8s.check_all(root)
    assert any("nprocPerNode 2 is not the 4 GPUs per pod" in p for p in problems), problems


def test_every_documented_kubectl_apply_path_is_checked() -> None:
    """`kubectl apply -k PATH` in the docs and manifests names a kustomization the check renders."""
    import re

    sources = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *k8s.K8S.rglob("*.yaml")]
    documented = {
        m.group(1).rstrip("/.")
        for path in sources
        for m in re.finditer(r"kubectl apply -k (deploy/k8s/[\w./-]*)", path.read_text())
    }
    assert "deploy/k8s/training/indexed-job" in documented
    checked = {f"deploy/k8s/{k}" for k in k8s.KUSTOMIZATIONS}
    assert documented <= checked, documented - checked


def test_the_prometheusrule_is_the_alert_file() -> None:
    rule = _rendered("PrometheusRule")
    shipped = yaml.safe_load(prometheus.RULES.read_text())
    assert rule["spec"]["groups"] == shipped["groups"]


# ---- compose


def test_compose_files_pass() -> None:
    problems, checked = compose.check_all()
    assert problems == [] and len(checked) == 2


def test_compose_rejects_an_unknown_key(tmp_path: Path) -> None:
    data = yaml.safe_load(compose.COMPOSE.read_text())
    data["services"]["imgclf"]["restart_policy"] = "always"
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(data))
    model, errors = compose.resolved((broken,))
    assert model is None
    assert any("restart_policy" in e for e in errors), errors


def test_compose_stop_grace_must_cover_the_drain() -> None:
    model, errors = compose.resolved((compose.COMPOSE,))
    assert model is not None, errors
    model["services"]["imgclf"]["stop_grace_period"] = "20s"
    problems = list(compose.check_model(model, "compose"))
    assert any("does not cover the drain" in p for p in problems), problems


# ---- Dockerfile


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nCMD imgclf serve\n")
    problems = dockerfile.hadolint(bad)
    assert any("DL3006" in p for p in problems), problems  # untagged base image
    assert any("DL3013" in p for p in problems), problems  # unpinned pip install
    assert dockerfile.hadolint() == []


def test_dockerignore_semantics(tmp_path: Path) -> None:
    rules = dockerfile.ignore_rules("*\n!service/\n**/__pycache__\n")
    assert dockerfile.excluded(".venv/bin/python", rules)
    assert not dockerfile.excluded("service/cli.py", rules)
    assert dockerfile.excluded("service/__pycache__/cli.cpython-311.pyc", rules)
    files = dockerfile.context_files()
    assert "service/cli.py" in files and "models/digits/1/model.onnx" in files
    assert not any(f.startswith((".venv/", ".git/", "tests/")) for f in files)
    stages = dockerfile.copy_sources()
    # training/ is copied too (pyproject maps imgclf.training onto it); torch is not installed
    assert stages["serve-build"] == ["pyproject.toml", "README.md", "service/", "training/"]
    assert "training/" in stages["train"] and "models/" in stages["serve"]
    assert list(dockerfile.check_context(files, stages)) == []


def test_the_serving_image_carries_no_torch() -> None:
    text = (REPO / "Dockerfile").read_text()
    serve_build = text.split("AS serve-build", 1)[1].split("\nFROM ", 1)[0]
    assert "pip install --no-cache-dir ." in serve_build and "[train]" not in serve_build
    assert "find_spec('torch') is None" in serve_build


# ---- Prometheus rules and the dashboard


def test_dashboard_structure_and_substitution() -> None:
    board = dashboard.load()
    assert list(dashboard.static_problems(board)) == []
    for q in dashboard.queries(board):
        assert "$" not in dashboard.substitute(q.expr, model="digits")
    moved = copy.deepcopy(board)
    gpu_panel = next(
        p for p in moved["panels"] if "imgclf_gpu_utilization_ratio" in str(p.get("targets"))
    )
    moved["panels"].remove(gpu_panel)
    moved["panels"].insert(1, gpu_panel)  # into the first row, away from the GPU row
    assert any("GPU series outside" in p for p in dashboard.static_problems(moved))


def test_promtool_parses_dashboard_queries_and_rejects_nonsense() -> None:
    require_binary("promtool")
    bad = [("broken", "sum by (model (rate(imgclf_requests_total[5m]))")]
    assert list(prometheus.expressions_parse(bad)) == ["broken: not valid PromQL: " + bad[0][1]]
    problems, _ = prometheus.check_all()
    assert problems == []
