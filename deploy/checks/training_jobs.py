"""Cross-checks of the multi-node training manifests (deploy/k8s/training/*), run by
deploy.checks.k8s after schema validation: the numbers and names that must agree for the
torchrun rendezvous to form, and the pieces a resumable run needs.

- PyTorchJob: Worker replicas = elasticPolicy minReplicas = maxReplicas (a fixed group); the
  container named pytorch exposes rdzvPort; nprocPerNode = the pod's nvidia.com/gpu count
  when it has GPUs (one process per GPU), with GPU requests = limits.
- Indexed Job: completions = parallelism = torchrun --nnodes; --rdzv-endpoint is pod 0 of the
  Job under its subdomain, a headless Service of that name selects the Job's pods, publishes
  not-ready addresses and serves the rendezvous port.
- Both: torchrun (or `imgclf launch`, torchrun with a one-line rendezvous error) runs
  `imgclf train` with --auto-resume, so a restarted group resumes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

from deploy.checks.kustomize import Resource


def _flag(command: str, name: str) -> str | None:
    words = shlex.split(command.replace(";", " ; "))
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _command(container: dict[str, Any]) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


def _common(container: dict[str, Any], where: str) -> Iterator[str]:
    command = _command(container)
    launcher = "torchrun" in command or "imgclf launch" in command
    if not launcher or "imgclf train" not in command:
        yield f"{where}: the container does not run `imgclf launch|torchrun ... imgclf train`"
    elif "--auto-resume" not in command:
        yield f"{where}: imgclf train without --auto-resume: a restarted group starts over"
    limits = container.get("resources", {}).get("limits", {})
    requests = container.get("resources", {}).get("requests", {})
    if "nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests:
        if limits.get("nvidia.com/gpu") != requests.get("nvidia.com/gpu"):
            yield f"{where}: nvidia.com/gpu requests and limits must be equal"
        if _flag(command, "--device") != "cuda":
            yield f"{where}: a GPU pod must train with --device cuda"


def check_pytorchjob(job: Resource) -> Iterator[str]:
    where = job.describe()
    spec = job.doc["spec"]
    worker = spec["pytorchReplicaSpecs"].get("Worker", {})
    elastic = spec.get("elasticPolicy")
    if elastic is not None:
        sizes = {worker.get("replicas"), elastic.get("minReplicas"), elastic.get("maxReplicas")}
        if len(sizes) != 1:
            yield f"{where}: Worker replicas, minReplicas and maxReplicas differ: {sizes}"
    pod = worker.get("template", {}).get("spec", {})
    main = [c for c in pod.get("containers", []) if c.get("name") == "pytorch"]
    if not main:
        return
    container = main[0]
    yield from _common(container, where)
    port = (elastic or {}).get("rdzvPort")
    ports = {p.get("containerPort") for p in container.get("ports", [])}
    if port is not None and port not in ports:
        yield f"{where}: rdzvPort {port} is no port of the pytorch container"
    gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    if gpus is not None and str(spec.get("nprocPerNode")) != str(gpus):
        yield f"{where}: nprocPerNode {spec.get('nprocPerNode')} is not the {gpus} GPUs per pod"


def check_indexed_job(job: Resource, services: list[Resource]) -> Iterator[str]:
    where = job.describe()
    spec = job.doc["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    yield from _common(container, where)
    command = _command(container)
    nnodes = _flag(command, "--nnodes")
    if str(spec.get("completions")) != nnodes or str(spec.get("parallelism")) != nnodes:
        yield f"{where}: completions and parallelism must both be --nnodes {nnodes}"
    endpoint = _flag(command, "--rdzv-endpoint") or ""
    match = re.fullmatch(r"([^.:]+)\.([^.:]+):(\d+)", endpoint)
    subdomain = pod.get("subdomain")
    if match is None or match.group(1) != f"{job.name}-0" or match.group(2) != subdomain:
        yield f"{where}: --rdzv-endpoint must be {job.name}-0.{subdomain}:PORT, not {endpoint!r}"
        return
    named = [s for s in services if s.name == subdomain]
    if not named:
        yield f"{where}: no Service {subdomain} (the pods' subdomain) in this kustomization"
        return
    svc = named[0].doc["spec"]
    if svc.get("clusterIP") != "None" or not svc.get("publishNotReadyAddresses"):
        yield f"{named[0].describe()}: must be headless and publish not-ready addresses"
    if svc.get("selector") != {"batch.kubernetes.io/job-name": job.name}:
        yield f"{named[0].describe()}: must select batch.kubernetes.io/job-name: {job.name}"
    if int(match.group(3)) not in {p.get("port") for p in svc.get("ports", [])}:
        yield f"{named[0].describe()}: does not serve the rendezvous port {match.group(3)}"


def check_training(resources: list[Resource]) -> Iterator[str]:
    services = [r for r in resources if r.kind == "Service"]
    for r in resources:
        if r.kind == "PyTorchJob":
            yield from check_pytorchjob(r)
        elif r.kind == "Job" and r.doc["spec"].get("completionMode") == "Indexed":
            yield from check_indexed_job(r, services)
