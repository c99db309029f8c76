"""The model repository on disk: models/<name>/<version>/model.onnx.

Optional files:
- models/<name>/config.json: serving knobs for that model (see ModelConfig).
- models/<name>/<version>/config.json: metadata for a foreign ONNX classifier, the keys of
  service.modelmeta (labels, input_size, resize_size, mean, std, ...), overriding the
  model's embedded metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"


class ModelConfig(BaseModel):
    """Per-model serving knobs; unset fields take the server's settings."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_batch_size: int | None = Field(None, ge=1)
    """Largest batch the batcher forms for this model."""
    max_queue_delay_ms: float | None = Field(None, ge=0)
    """How long the batcher waits for more requests once it has one."""
    max_queue_size: int | None = Field(None, ge=1)
    """Images waiting beyond which requests are refused."""
    providers: Literal["auto", "cpu", "cuda"] | None = None
    """auto, cpu or cuda for this model."""


@dataclass(frozen=True)
class ModelEntry:
    """One model version found on disk. Its config files are read when it is loaded, so a bad
    file fails that model's load only."""

    name: str
    version: int
    path: Path
    """The model.onnx file."""

    def read_config(self) -> ModelConfig:
        """Serving knobs from models/<name>/config.json (defaults when absent)."""
        return ModelConfig(**_read_json(self.path.parent.parent / CONFIG_FILE))

    def read_sidecar(self) -> dict[str, Any]:
        """Metadata overrides from the version's config.json (foreign models)."""
        return _read_json(self.path.parent / CONFIG_FILE)


def version_dirs(model_dir: Path) -> list[tuple[int, Path]]:
    """(version, folder) of the numeric version folders that hold a model file, newest first."""
    found = [
        (int(p.name), p)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / MODEL_FILE).is_file()
    ]
    return sorted(found, key=lambda vp: vp[0], reverse=True)


def versions_of(model_dir: Path) -> list[int]:
    """Numeric version folders that hold a model file, newest first."""
    return [v for v, _ in version_dirs(model_dir)]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def scan(root: Path) -> list[ModelEntry]:
    """The newest version of every model in the repository, sorted by name."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist")
    entries = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = version_dirs(model_dir)
        if versions:
            version, version_dir = versions[0]
            entries.append(ModelEntry(model_dir.name, version, version_dir / MODEL_FILE))
    return entries
