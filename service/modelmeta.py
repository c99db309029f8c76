"""The contract between training and serving: what an ONNX model says about itself.

`training/export.py` writes these keys into the ONNX `metadata_props` (each value JSON);
the server reads them back. A foreign ONNX classifier supplies the same keys in a
`config.json` beside `model.onnx`; keys in that file win over the embedded ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from imgclf.imaging import Preprocessing

REQUIRED_KEYS = ("labels", "input_size", "resize_size", "mean", "std")
OUTPUT_KINDS = ("logits", "probabilities")
LAYOUTS = ("NCHW", "NHWC")
"""NCHW: float input, preprocessed by the server. NHWC: uint8 pixels, resized and cropped by
the server, normalised in the graph (`imgclf export --bake-preprocessing`)."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the server needs to serve a classifier with zero configuration."""

    labels: list[str]
    """Class names, index i names output column i."""
    input_size: tuple[int, int]
    """(height, width) of the model input."""
    resize_size: int
    """Shorter side before the center crop (the eval preset)."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    input_layout: str = "NCHW"
    output: str = "logits"
    """Whether the model's output is `logits` (the server applies softmax) or `probabilities`."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Architecture, weights, dataset, validation accuracy, opset, library versions, ..."""

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if self.input_layout not in LAYOUTS:
            raise ValueError(f"input_layout must be one of {LAYOUTS}, got {self.input_layout!r}")
        if not self.labels:
            raise ValueError("labels must not be empty")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(self.std):
            raise ValueError(f"mean and std need 3 values, std non-zero: {self.mean}, {self.std}")
        self.preprocessing  # noqa: B018 - validates sizes and interpolation at load time

    @property
    def pixel_input(self) -> bool:
        """The model takes uint8 NHWC pixels and normalises them itself."""
        return self.input_layout == "NHWC"

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """One image's input shape: (3, H, W), or (H, W, 3) for a pixel-input model."""
        h, w = self.input_size
        return (h, w, 3) if self.pixel_input else (3, h, w)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            input_size=self.input_size,
            resize_size=self.resize_size,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )

    def to_props(self) -> dict[str, str]:
        """The ONNX metadata_props form: every value JSON-encoded; provenance keys flattened."""
        props = {k: json.dumps(v) for k, v in asdict(self).items() if k != "provenance"}
        props.update({k: json.dumps(v) for k, v in self.provenance.items()})
        return props

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelMetadata:
        missing = [k for k in REQUIRED_KEYS if k not in values]
        if missing:
            raise ValueError(f"model metadata lacks {', '.join(missing)}")
        size = values["input_size"]
        if isinstance(size, int):
            size = (size, size)
        known = {f for f in cls.__dataclass_fields__ if f != "provenance"}
        return cls(
            labels=[str(x) for x in values["labels"]],
            input_size=(int(size[0]), int(size[1])),
            resize_size=int(values["resize_size"]),
            mean=tuple(float(x) for x in values["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in values["std"]),  # type: ignore[arg-type]
            interpolation=str(values.get("interpolation", "bilinear")),
            input_layout=str(values.get("input_layout", "NCHW")),
            output=str(values.get("output", "logits")),
            provenance={k: v for k, v in values.items() if k not in known},
        )

    @classmethod
    def from_props(
        cls, props: dict[str, str], overrides: dict[str, Any] | None = None
    ) -> ModelMetadata:
        """Parse ONNX metadata_props (JSON values; plain strings tolerated), then overrides."""
        values: dict[str, Any] = {}
        for key, raw in props.items():
            try:
                values[key] = json.loads(raw)
            except (json.JSONDecodeError, TypeError):
                values[key] = raw
        values.update(overrides or {})
        return cls.from_dict(values)
