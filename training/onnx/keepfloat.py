"""Nodes left in float in a QDQ model stay in float when ONNX Runtime loads it.

ONNX Runtime's ``WeightBiasQuantization`` graph transformer (basic level, ORT >= 1.20)
quantises the float weights of every Conv, ConvTranspose or Gemm whose input comes from a
DequantizeLinear with a per-tensor scale: symmetric per-tensor INT8 weights, whatever the
quantiser was told. A node excluded from quantisation (``Calibration.keep_float``) but fed by a
quantised activation is exactly that case, so at run time it got per-tensor INT8 weights,
worse than the per-channel ones it was spared (EfficientNet-Lite0 with its first depthwise
convolution "kept in float": top-1 agreement with FP32 73.1 %, against 88.9 % with nothing
kept and 92.6 % with that convolution really in float).

`keep_in_float` gives each such node a DequantizeLinear of its own whose scale and zero point
are the same numbers repeated per channel (axis 1): the same values, but not a per-tensor DQ,
so the transformer leaves the node, and its weights, as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

KEPT_OPS = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(node: onnx.NodeProto, weights: np.ndarray) -> int | None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return int(weights.shape[1]) * int(attrs.get("group", 1))
    if node.op_type == "ConvTranspose":
        return int(weights.shape[0])
    if attrs.get("transA", 0):
        return None  # the channels of A are its rows: leave it alone
    return int(weights.shape[1] if attrs.get("transB", 0) else weights.shape[0])


def keep_in_float(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """Give the named Conv/ConvTranspose/Gemm nodes that a per-tensor DequantizeLinear feeds a
    per-channel copy of it (in place); returns the names of the nodes changed."""
    graph = model.graph
    wanted = set(names)
    init = {i.name: i for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    changed, added = [], []
    for node in graph.node:
        if node.name not in wanted or node.op_type not in KEPT_OPS or node.input[1] not in init:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        scale, zero = init.get(dq.input[1]), init.get(dq.input[2])
        channels = _input_channels(node, numpy_helper.to_array(init[node.input[1]]))
        if scale is None or zero is None or channels is None or len(scale.dims) > 0:
            continue
        stem = f"{node.name}_float_input"
        for source, suffix in ((scale, "scale"), (zero, "zero_point")):
            value = numpy_helper.to_array(source)
            graph.initializer.append(
                numpy_helper.from_array(np.full(channels, value, value.dtype), f"{stem}_{suffix}")
            )
        added.append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [dq.input[0], f"{stem}_scale", f"{stem}_zero_point"],
                [stem],
                name=f"{stem}_DequantizeLinear",
                axis=1,
            )
        )
        node.input[0] = stem
        changed.append(node.name)
    # each new DQ goes just before its node, keeping the graph topologically sorted
    for dq_node in added:
        target = next(i for i, n in enumerate(graph.node) if dq_node.output[0] in n.input)
        graph.node.insert(target, dq_node)
    return changed
