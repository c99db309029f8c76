"""A tiny real ONNX classifier built with the onnx helper (no torch), for fast tests.

Input (N, 3, H, W) float32 -> global average pool -> linear -> logits (N, classes), with imgclf
metadata. Its weights make the mean red/green/blue intensity decide the class, so real images
with a dominant colour give a predictable answer. `head="flatten"` drops the pooling
(flatten + linear over every pixel: a head without class activation maps). The pixel-input
variant takes uint8 (N, H, W, 3) and scales it to [0, 1] in the graph (mean 0, std 1: what
the server does for the float one), as `imgclf export --bake-preprocessing` models do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from imgclf.modelmeta import ModelMetadata

LABELS = ["red", "green", "blue"]


def make_tiny_model(
    path: Path,
    size: int = 16,
    labels: list[str] | None = None,
    with_metadata: bool = True,
    batch: int | str = "N",
    pixel_input: bool = False,
    head: str = "gap",
) -> Path:
    labels = labels or LABELS
    k = len(labels)
    weight = np.zeros((3, k), dtype=np.float32)
    for i in range(k):
        weight[i % 3, i] = 4.0
    bias = np.zeros((k,), dtype=np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["nchw"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
    ]
    if head == "flatten":  # the same answer, from every pixel's weight: no pooling
        weight = np.repeat(weight, size * size, axis=0) / np.float32(size * size)
        nodes = nodes[1:]
        nodes[0] = helper.make_node("Flatten", ["nchw"], ["flat"], axis=1)
    initializers = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]
    if pixel_input:
        nodes[:0] = [
            helper.make_node("Cast", ["input"], ["float_hwc"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["float_hwc"], ["float_chw"], perm=[0, 3, 1, 2]),
            helper.make_node("Mul", ["float_chw", "scale"], ["nchw"]),
        ]
        initializers.append(numpy_helper.from_array(np.float32(1 / 255), "scale"))
        inp = helper.make_tensor_value_info("input", TensorProto.UINT8, [batch, size, size, 3])
    else:
        nodes.insert(0, helper.make_node("Identity", ["input"], ["nchw"]))
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])
    graph = helper.make_graph(
        nodes,
        "tiny",
        [inp],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        meta = ModelMetadata(
            labels=labels,
            input_size=(size, size),
            resize_size=size,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            input_layout="NHWC" if pixel_input else "NCHW",
            provenance={"architecture": "tiny-test"},
        )
        helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
