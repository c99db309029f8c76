"""The model repository on disk, as the server reads it: models/<name>/<version>/model.onnx
(the layout itself, shared with the bench and training, is imgclf.repolayout).

Optional files:
- models/<name>/config.json: serving knobs for that model (see ModelConfig).
- models/<name>/<version>/config.json: metadata for a foreign ONNX classifier, the keys of
  imgclf.modelmeta (labels, input_size, resize_size, mean, std, ...), overriding the
  model's embedded metadata.

Here: the per-model ModelConfig and VersionPolicy, and the checks every door passes (a plain
model name whose folder lies inside the repository), the scan of the repository.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imgclf.errors import InvalidModelName
from imgclf.repolayout import CONFIG_FILE, inside, read_json, versions
from imgclf.settings import describe_field


class VersionPolicy(BaseModel):
    """Which versions of a model to serve: the newest N (default 1), all, or specific ones."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(None, ge=1)
    all: bool = False
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        if sum([self.latest is not None, self.all, self.specific is not None]) > 1:
            raise ValueError("version_policy takes one of latest, all, specific")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among `available`, newest first."""
        newest_first = sorted(available, reverse=True)
        if self.all:
            return newest_first
        if self.specific is not None:
            return [v for v in newest_first if v in set(self.specific)]
        return newest_first[: self.latest or 1]


class ModelConfig(BaseModel):
    """Per-model serving knobs in models/<name>/config.json; unset fields take the server's
    settings."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_batch_size: int | None = Field(None, ge=1)
    """Largest batch the batcher forms for this model (unset: --max-batch-size)."""
    max_queue_delay_ms: float | None = Field(None, ge=0)
    """How long the batcher waits for more requests once it has one (unset:
    --max-queue-delay-ms)."""
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    """Batch sizes dispatched at once when reached (no further waiting)."""
    max_queue_size: int | None = Field(None, ge=1)
    """Images waiting beyond which requests are refused (unset: --max-queue-size)."""
    default_timeout_ms: float | None = Field(None, ge=0)
    """Queue timeout for requests that set none, 0 for none (unset: --default-timeout-ms)."""
    priority_levels: int = Field(1, ge=1)
    """Number of priority levels (1 = most urgent)."""
    default_priority_level: int = Field(1, ge=1)
    """Level of requests that set no priority."""
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    """Which versions to serve: {"latest": N}, {"all": true} or {"specific": [..]} (unset:
    the newest one)."""
    instances: int | None = Field(None, ge=1)
    """ONNX Runtime sessions for this model, each fed batches by its own worker (unset:
    --instances)."""
    instance_kind: Literal["auto", "cpu", "gpu"] = "auto"
    """Where the instances run; gpu requires CUDA, cpu forbids it, auto picks."""
    gpus: list[int] = Field(default_factory=list)
    """GPU ids for the instances, round-robin (unset: --gpu-id)."""
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] | None = None
    """Execution provider for this model: auto, cpu, cuda, tensorrt (overrides instance_kind;
    unset: --providers)."""
    intra_op_threads: int | None = Field(None, ge=0)
    """ONNX Runtime intra-op threads per instance (unset: --intra-op-threads, or the cores
    shared among the instances)."""
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] | None = None
    """CUDA: how cuDNN picks convolution algorithms (unset: HEURISTIC)."""
    gpu_mem_limit_bytes: int | None = Field(None, ge=0)
    """CUDA: memory arena limit per instance in bytes (unset or 0: none)."""
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] | None = None
    """CUDA: how the memory arena grows (unset: kNextPowerOfTwo)."""
    tensorrt_fp16: bool = False
    """TensorRT: build FP16 engines."""
    cuda_graphs: bool | None = None
    """CUDA: capture and replay a CUDA graph per batch size bucket (unset: --cuda-graphs)."""
    precision: Literal["auto", "float", "int8"] = "auto"
    """Which variant of a version folder to serve: model.onnx (float) or model.int8.onnx;
    auto: INT8 on a CPU with VNNI, or with AVX2 when the INT8 file's weights are 7-bit, the
    float model elsewhere (imgclf.models.variants)."""
    explain: bool = True
    """Class activation maps on request, for a model whose head is global pooling + one
    linear layer (its session then also returns the feature tensor; plain requests do not
    fetch it)."""
    image_input: bool = False
    """Open Inference Protocol: advertise a BYTES input `image` (encoded images) instead of
    the tensor input, so load tools drive the server-side decode path."""

    @model_validator(mode="after")
    def _levels(self) -> ModelConfig:
        if self.default_priority_level > self.priority_levels:
            raise ValueError("default_priority_level must be <= priority_levels")
        if any(b < 1 for b in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must be positive")
        return self


def config_table() -> str:
    """The models/<name>/config.json reference as a Markdown table (docs embed it verbatim)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name in ModelConfig.model_fields:
        description, default = describe_field(ModelConfig, name)
        shown = f"`{default}`" if default else "(unset)"
        rows.append(f"| `{name}` | {shown} | {description} |")
    return "\n".join(rows)


def read_model_config(model_dir: Path) -> ModelConfig:
    """Serving knobs from models/<name>/config.json (defaults when absent; ValueError when it
    links outside the repository, which is model_dir's parent)."""
    path = model_dir / CONFIG_FILE
    if not inside(path, model_dir.parent):
        raise ValueError(f"{CONFIG_FILE} links outside the model repository")
    return ModelConfig(**read_json(path))


def config_fingerprint(model_dir: Path) -> int:
    path = model_dir / CONFIG_FILE
    return path.stat().st_mtime_ns if path.exists() else 0


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A plain model name: the POSIX portable filename characters, not starting with a dot (no
`.`, `..` or hidden folders), at most 128 characters. No separator, NUL or other character
can reach the file system through it."""


def check_model_name(name: str) -> str:
    """`name` if it is a plain model name; InvalidModelName (never echoing more than the
    error layer lets through) otherwise."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidModelName(
            f"model name {name!r} is not a plain name: 1-128 letters, digits, '.', '_' or '-', "
            "not starting with '.'"
        )
    return name


def model_dir(root: Path, name: str) -> Path:
    """The folder of model `name` in the repository at `root`: the one check every door (load
    and unload RPCs, the start-up list, polling, the index) passes. The name must be plain
    and the folder, links followed, must lie inside the repository (InvalidModelName)."""
    path = root / check_model_name(name)
    if path.exists() and not inside(path, root):
        raise InvalidModelName(f"model {name!r} links outside the model repository")
    return path


def scan(root: Path) -> tuple[list[str], dict[str, str]]:
    """(models in the repository: plain-named folders inside it with at least one version,
    sorted; entries refused, with why). FileNotFoundError when the repository is missing."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist")
    names: list[str] = []
    refused: dict[str, str] = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue  # hidden: version control, staging folders, Kubernetes' ..data links
        try:
            folder = model_dir(root, p.name)
        except InvalidModelName as exc:
            if p.is_dir():
                refused[p.name] = str(exc)
            continue
        if folder.is_dir() and versions(folder):
            names.append(p.name)
    return names, refused


def model_names(root: Path) -> list[str]:
    """Models in the repository (see scan), sorted."""
    return scan(root)[0]


def relative_to_root(text: str, root: Path) -> str:
    """`text` with the repository's path taken out where a path starts (as given, absolute
    and resolved), so that what reaches a client names files relative to the repository
    root."""
    for prefix in sorted({str(root), str(root.absolute()), str(root.resolve())}, key=len)[::-1]:
        start = re.compile(r"(?<![\w.~/-])" + re.escape(prefix.rstrip("/") + "/"))
        text = start.sub("", text)
    return text
