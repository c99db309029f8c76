"""PyTorch -> ONNX graphs: the exporters, the wrappers that bake softmax or normalisation into
the graph, and the signature each variant must have.

Exporters: ``dynamo`` (torch.export based, the default; it writes opset >= 18) and ``legacy``
(TorchScript based; opset 17 by default). Both get a dynamic batch axis traced at batch 2.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import onnx
import torch
from torch import nn


class ExportError(RuntimeError):
    """The exported graph is not what the server expects."""


INPUT_NAME = "input"
LOGITS = "logits"
PROBABILITIES = "probabilities"
EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = {"dynamo": 18, "legacy": 17}
DYNAMO_MIN_OPSET = 18
TRACE_BATCH = 2


@dataclass(frozen=True)
class Variant:
    """One exported form of a model."""

    name: str
    suffix: str
    """Appended to the model name in the repository."""
    input_type: int
    """ONNX element type of the input."""
    layout: str
    output_type: int = onnx.TensorProto.FLOAT


FP32 = Variant("fp32", "", onnx.TensorProto.FLOAT, "NCHW")
FP16 = Variant("fp16", "_fp16", onnx.TensorProto.FLOAT16, "NCHW", onnx.TensorProto.FLOAT16)
UINT8 = Variant("uint8", "_uint8", onnx.TensorProto.UINT8, "NHWC")


class WithSoftmax(nn.Module):
    """The model's logits turned into probabilities inside the graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


class BakedPreprocessing(nn.Module):
    """uint8 NHWC pixels, already resized and center-cropped to the input size, normalised in
    the graph exactly as imgclf.imaging.normalize does ((x * 1/255 - mean) * 1/std)."""

    def __init__(self, model: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", torch.tensor(1.0 / 255.0, dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        inv_std = 1.0 / torch.tensor(std, dtype=torch.float64)
        self.register_buffer("inv_std", inv_std.to(torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32) * self.scale
        return self.model((x - self.mean) * self.inv_std)


def export_graph(
    module: nn.Module, example: torch.Tensor, opset: int, exporter: str, output_name: str = LOGITS
) -> bytes:
    """The ONNX bytes of `module` traced on `example`, with a dynamic batch axis."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    buffer = io.BytesIO()
    chatter = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            if opset < DYNAMO_MIN_OPSET:
                raise ExportError(
                    f"the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET} (asked for "
                    f"{opset}); use --legacy-exporter for opset {opset}"
                )
            torch.onnx.export(
                module,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                verbose=False,
            )
        else:
            torch.onnx.export(
                module,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            )
    return buffer.getvalue()


def graph_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_signature(
    proto: onnx.ModelProto,
    variant: Variant,
    input_size: tuple[int, int],
    num_classes: int,
    output_name: str,
) -> None:
    """One input and one (batch, classes) output, both with a dynamic batch axis, of the
    variant's element types and layout."""
    weights = {x.name for x in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    names = ([i.name for i in inputs], [o.name for o in proto.graph.output])
    if names != ([INPUT_NAME], [output_name]):
        raise ExportError(f"graph inputs/outputs are {names}, want {INPUT_NAME}/{output_name}")
    in_type = inputs[0].type.tensor_type.elem_type
    out_type = proto.graph.output[0].type.tensor_type.elem_type
    if (in_type, out_type) != (variant.input_type, variant.output_type):
        have = (onnx.TensorProto.DataType.Name(in_type), onnx.TensorProto.DataType.Name(out_type))
        raise ExportError(f"{variant.name}: input/output types are {have}")
    dims = _dims(inputs[0])
    h, w = input_size
    expected = [3, h, w] if variant.layout == "NCHW" else [h, w, 3]
    if len(dims) != 4 or not isinstance(dims[0], str) or dims[1:] != expected:
        raise ExportError(f"input shape {dims}, want [batch, {expected}] with a dynamic batch")
    out_dims = _dims(proto.graph.output[0])
    if len(out_dims) != 2 or not isinstance(out_dims[0], str):
        raise ExportError(f"output shape {out_dims}, want [batch, classes]")
    if out_dims[1] != num_classes:
        raise ExportError(f"{out_dims[1]} outputs but {num_classes} labels")
