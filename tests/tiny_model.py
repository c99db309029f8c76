"""A tiny real ONNX classifier built with the onnx helper (no torch), for fast tests.

Input (N, 3, H, W) float32 -> global average pool -> linear -> logits (N, classes), with imgclf
metadata. Its weights make the mean red/green/blue intensity decide the class, so real images
with a dominant colour give a predictable answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.modelmeta import ModelMetadata

LABELS = ["red", "green", "blue"]


def make_tiny_model(
    path: Path,
    size: int = 16,
    labels: list[str] | None = None,
    with_metadata: bool = True,
    batch: int | str = "N",
) -> Path:
    labels = labels or LABELS
    k = len(labels)
    weight = np.zeros((3, k), dtype=np.float32)
    for i in range(k):
        weight[i % 3, i] = 4.0
    bias = np.zeros((k,), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
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
            provenance={"architecture": "tiny-test"},
        )
        helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
