"""The folder layout of a model repository, shared by the server, the bench and training:
<repository>/<name>/<version>/model.onnx, a version's optional config.json (metadata for a
foreign ONNX classifier, the keys of imgclf.modelmeta) beside its model file, and a model's
optional config.json (its serving knobs, read by imgclf.models.repository) in <name>/.

Reading the layout needs nothing of the server: `versions` lists what a model folder holds
(and skips what links outside the repository), `ModelEntry` is one version found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
"""A version folder may hold an INT8 variant beside model.onnx, or only that
(imgclf.models.variants)."""
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ModelEntry:
    """One model version found on disk."""

    name: str
    version: int
    path: Path
    """The model.onnx file, or model.int8.onnx in a folder holding only that (the variant
    served is chosen at load: imgclf.models.variants)."""

    def read_sidecar(self) -> dict[str, Any]:
        """Metadata overrides from the version's config.json (foreign models)."""
        return read_json(self.path.parent / CONFIG_FILE)

    def fingerprint(self) -> tuple[int, int, int]:
        """Changes when a model file or its sidecar changes (for polling)."""
        stat = self.path.stat()
        sidecar = self.path.parent / CONFIG_FILE
        sidecar_mtime = sidecar.stat().st_mtime_ns if sidecar.exists() else 0
        int8 = self.path.parent / INT8_FILE
        if int8 != self.path and int8.exists():
            int8_stat = int8.stat()
            sidecar_mtime += int8_stat.st_mtime_ns + int8_stat.st_size
        return (stat.st_mtime_ns, stat.st_size, sidecar_mtime)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path` ({} when there is no such file; ValueError for another
    JSON value)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, symbolic links followed, lies inside `root` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a loop of links, or gone meanwhile
        return False


def versions(model_dir: Path) -> list[ModelEntry]:
    """Every version folder (numeric name) holding a model file, newest first. `model_dir` is
    <root>/<name>; a version whose folder or model file links outside <root> is skipped."""
    if not model_dir.is_dir():
        return []
    root = model_dir.parent
    found: dict[int, ModelEntry] = {}
    for p in sorted(model_dir.iterdir()):
        if not (p.is_dir() and p.name.isdigit()):
            continue
        model_file = next((p / f for f in (MODEL_FILE, INT8_FILE) if (p / f).is_file()), None)
        if model_file is None or not all(
            inside(p / f, root) for f in (MODEL_FILE, INT8_FILE, CONFIG_FILE)
        ):
            continue
        version = int(p.name)
        # "7" and "007" are both version 7: the canonical name wins, else the first in order.
        if version not in found or p.name == str(version):
            found[version] = ModelEntry(model_dir.name, version, model_file)
    return sorted(found.values(), key=lambda e: e.version, reverse=True)
