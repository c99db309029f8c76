"""Which layers' INT8 weights cost the output most: each layer's weights rounded alone.

The gate's other report (quantize.worst_tensors) ranks nodes by the SQNR they lose against
their inputs, a local measure: a layer whose small local error the rest of the network
amplifies does not show there. Here each Conv/ConvTranspose/Gemm of the float model has its
weights rounded to symmetric per-channel INT8, as the quantiser rounds them, alone, with
every activation in float, and the model's output is compared with the float output. On
EfficientNet-Lite0 this names the first depthwise convolution (19.7 dB at the logits, every
other layer above 28 dB), which the local ranking does not list.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from imgclf.runtime.options import ExecutionOptions, session_options

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm")


def channel_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of the node's weights (per-channel quantisation's axis)."""
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def round_to_int8(weights: np.ndarray, axis: int) -> np.ndarray:
    """`weights` rounded to symmetric INT8 with one scale per channel along `axis`."""
    moved = np.moveaxis(weights, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    rounded = np.clip(np.round(flat / scale[:, None]), -127, 127) * scale[:, None]
    return np.moveaxis(rounded.reshape(moved.shape), 0, axis).astype(weights.dtype)


def _outputs(proto: onnx.ModelProto, name: str, inputs: np.ndarray) -> np.ndarray:
    so = session_options(ExecutionOptions(providers="cpu"))
    session = ort.InferenceSession(proto.SerializeToString(), so, ["CPUExecutionProvider"])
    return session.run(None, {name: inputs})[0].astype(np.float64)


def weight_sensitivity(float_model: Path, inputs: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    """The `top` layers of `float_model` whose per-channel INT8 weights, alone, leave the
    lowest output SQNR on `inputs` (dB; lowest first): candidates for ``keep_float``."""
    proto = onnx.load(str(float_model))
    weights = {i.name: i for i in proto.graph.initializer}
    name = next(i.name for i in proto.graph.input if i.name not in weights)
    reference = _outputs(proto, name, inputs)
    signal = max(float(np.linalg.norm(reference)), 1e-12)
    rows = []
    for node in proto.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        tensor = weights.get(node.input[1])
        if tensor is None:
            continue
        original = numpy_helper.to_array(tensor)
        rounded = round_to_int8(original, channel_axis(node))
        tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
        noise = max(float(np.linalg.norm(_outputs(proto, name, inputs) - reference)), 1e-12)
        tensor.CopyFrom(numpy_helper.from_array(original, tensor.name))
        rows.append({"node": node.name, "output_sqnr_db": 20.0 * float(np.log10(signal / noise))})
    rows.sort(key=lambda r: r["output_sqnr_db"])
    return rows[:top]


def describe_sensitive(sensitive: Sequence[dict[str, Any]]) -> str:
    """The weight-sensitive layers as report lines."""
    return "\n".join(
        f"  {s['node']}: its INT8 weights alone leave {s['output_sqnr_db']:.1f} dB of output SQNR"
        for s in sensitive
    )
