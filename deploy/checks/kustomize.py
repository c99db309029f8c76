"""A small, strict kustomize: exactly the features deploy/k8s uses, nothing guessed.

No kustomize binary is to be had offline (not on PyPI or in Debian), so `make deploy-check`
renders the kustomizations with this: `resources` (files and kustomization directories),
`images` (newName/newTag/digest) and `patches` holding RFC 6902 JSON patches (add, remove,
replace, test) with a `target` (group/version/kind/name). Any other key, a strategic-merge
patch, a patch or image override that matches nothing, or a failing `test` op is an error, so
a manifest that kustomize would render differently is refused rather than validated wrongly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.checks.common import load_yaml, load_yaml_docs, rel

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
PATCH_KEYS = {"path", "patch", "target"}
TARGET_KEYS = {"group", "version", "kind", "name"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
JSON_PATCH_OPS = {"add", "remove", "replace", "test"}


class RenderError(Exception):
    pass


@dataclass
class Resource:
    doc: dict[str, Any]
    origin: Path

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.doc.get("metadata", {}).get("name", ""))

    def describe(self) -> str:
        return f"{self.kind}/{self.name} ({rel(self.origin)})"


def render(directory: Path) -> list[Resource]:
    """The resources of the kustomization in `directory`, patched and with images set."""
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{rel(directory)}: no kustomization.yaml")
    k = load_yaml(path)
    where = rel(path)
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        raise RenderError(f"{where}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{where}: unsupported keys {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources += render(target)
        elif target.is_file():
            for doc in load_yaml_docs(target):
                if not isinstance(doc, dict):
                    raise RenderError(f"{rel(target)}: a document is not a mapping")
                resources.append(Resource(doc, target))
        else:
            raise RenderError(f"{where}: resource {entry} does not exist")
    for i, patch in enumerate(k.get("patches", [])):
        _apply_patch(resources, patch, directory, f"{where} patches[{i}]")
    for i, image in enumerate(k.get("images", [])):
        _set_image(resources, image, f"{where} images[{i}]")
    return resources


def files_of(directory: Path) -> set[Path]:
    """Every file a kustomization reads, recursively (resources and patch files)."""
    k = load_yaml(directory / "kustomization.yaml")
    files = {(directory / "kustomization.yaml").resolve()}
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        files |= files_of(target) if target.is_dir() else {target}
    for patch in k.get("patches", []):
        if "path" in patch:
            files.add((directory / patch["path"]).resolve())
    return files


# ---- patches ---------------------------------------------------------------------------------


def _matches(resource: Resource, target: dict[str, str]) -> bool:
    api = str(resource.doc.get("apiVersion", ""))
    group, _, version = api.rpartition("/")
    wanted = {"group": group, "version": version, "kind": resource.kind, "name": resource.name}
    return all(wanted[key] == value for key, value in target.items())


def _apply_patch(resources: list[Resource], patch: dict[str, Any], base: Path, where: str) -> None:
    unknown = set(patch) - PATCH_KEYS
    if unknown:
        raise RenderError(f"{where}: unsupported keys {sorted(unknown)}")
    target = patch.get("target")
    if not isinstance(target, dict) or not target or set(target) - TARGET_KEYS:
        raise RenderError(f"{where}: needs a target of {sorted(TARGET_KEYS)}")
    if ("path" in patch) == ("patch" in patch):
        raise RenderError(f"{where}: needs exactly one of path or patch")
    if "path" in patch:
        source = base / patch["path"]
        if not source.is_file():
            raise RenderError(f"{where}: {patch['path']} does not exist")
        ops = load_yaml(source)
        where = f"{where} ({rel(source)})"
    else:
        ops = yaml.safe_load(patch["patch"])
    if not isinstance(ops, list):
        raise RenderError(f"{where}: only JSON 6902 patches (a list of operations) are supported")
    matched = [r for r in resources if _matches(r, target)]
    if not matched:
        raise RenderError(f"{where}: target {target} matches no resource")
    for resource in matched:
        doc = copy.deepcopy(resource.doc)
        for j, op in enumerate(ops):
            try:
                apply_operation(doc, op)
            except RenderError as exc:
                raise RenderError(f"{where} op {j} on {resource.describe()}: {exc}") from None
        resource.doc = doc


def _pointer(path: str) -> list[str]:
    if not isinstance(path, str) or not path.startswith("/"):
        raise RenderError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise RenderError(f"path element {part!r} does not exist")
    return node


def apply_operation(doc: Any, op: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, remove, replace, test), in place."""
    kind = op.get("op")
    if kind not in JSON_PATCH_OPS or set(op) - {"op", "path", "value"}:
        raise RenderError(f"unsupported operation {op}")
    parts = _pointer(op.get("path"))
    parent, key = _parent(doc, parts), parts[-1]
    if isinstance(parent, dict):
        exists = key in parent
        if kind == "add":
            parent[key] = copy.deepcopy(op["value"])
            return
    elif isinstance(parent, list):
        if kind == "add" and key == "-":
            parent.append(copy.deepcopy(op["value"]))
            return
        if not key.isdigit():
            raise RenderError(f"bad list index {key!r}")
        index = int(key)
        if kind == "add":
            if index > len(parent):
                raise RenderError(f"index {index} out of range")
            parent.insert(index, copy.deepcopy(op["value"]))
            return
        exists = index < len(parent)
        key = index  # type: ignore[assignment]
    else:
        raise RenderError(f"{op['path']}: parent is not a container")
    if not exists:
        raise RenderError(f"{op['path']} does not exist")
    if kind == "remove":
        del parent[key]
    elif kind == "replace":
        parent[key] = copy.deepcopy(op["value"])
    elif parent[key] != op["value"]:
        raise RenderError(f"test failed: {op['path']} is {parent[key]!r}, not {op['value']!r}")


# ---- images ----------------------------------------------------------------------------------


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers (and init containers) of a workload, a ServingRuntime, a predictor or a
    PyTorchJob (kustomize sets images in any containers list)."""
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
    if doc.get("kind") == "CronJob":
        pod = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    if doc.get("kind") == "PyTorchJob":  # one pod template per replica type
        pods = [r.get("template", {}).get("spec", {}) for r in spec["pytorchReplicaSpecs"].values()]
        return [c for p in pods for c in (*p.get("containers", []), *p.get("initContainers", []))]
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def _set_image(resources: list[Resource], image: dict[str, Any], where: str) -> None:
    if set(image) - IMAGE_KEYS or "name" not in image:
        raise RenderError(f"{where}: unsupported image override {image}")
    hits = 0
    for resource in resources:
        for container in containers(resource.doc):
            if _image_name(str(container.get("image", ""))) != image["name"]:
                continue
            new = image.get("newName", image["name"])
            if "digest" in image:
                new += "@" + image["digest"]
            elif "newTag" in image:
                new += ":" + str(image["newTag"])
            container["image"] = new
            hits += 1
    if not hits:
        raise RenderError(f"{where}: image {image['name']!r} is used by no container")
