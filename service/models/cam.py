"""Class activation maps (Zhou et al. 2016) from an ONNX classifier, without torch or `onnx`.

For a network whose head is global average pooling, an optional flatten, and one linear layer
(ResNet, DenseNet, EfficientNet, MobileNetV2, ...), the logit of class k is the spatial mean of
sum_c W[k, c] * F[c, y, x] plus b[k], where F is the tensor entering the pooling. That weighted
sum, ReLU'd and normalised, is the class activation map: it needs no gradients (for such a head
it equals Grad-CAM up to scale) and costs one small matrix product beside the forward pass.

`find_head` reads the graph of a serialised ModelProto; `with_output` adds the feature tensor to
the graph's outputs so that an ONNX Runtime session returns it (ONNX Runtime cannot add outputs
itself). Both go through imgclf.onnxgraph (google.protobuf, no `onnx` package), which keeps
every field it does not know, so the edited model is the original plus one graph output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from imgclf.imaging import Preprocessing, resized_size
from imgclf.onnxgraph import DTYPES, FLOAT, parse

_PASS_THROUGH = ("Flatten", "Reshape", "Squeeze")
"""Ops allowed between the pooling and the linear layer: they only reshape [N, C, 1, 1]."""

_ATTR_FLOAT, _ATTR_INT, _ATTR_TENSOR, _ATTR_INTS = 1, 2, 4, 7  # AttributeProto.AttributeType


class HeadNotSupported(ValueError):
    """The model's head is not global pooling + one linear layer; the message says what it is."""


@dataclass(frozen=True)
class ActivationHead:
    """What a class activation map needs from a model."""

    feature: str
    """Name of the tensor [N, C, h, w] entering the global pooling."""
    weight: np.ndarray
    """float32 [classes, C]: the linear layer's rows, one per class."""
    bias: np.ndarray
    """float32 [classes]."""


def _array(tensor: Any) -> np.ndarray:
    """An initializer (or a Constant's value) as a numpy array."""
    if tensor.data_location != 0:
        raise HeadNotSupported(f"tensor {tensor.name!r} is stored outside the model file")
    dtype = DTYPES.get(tensor.data_type)
    if dtype is None:
        raise HeadNotSupported(f"tensor {tensor.name!r} has data type {tensor.data_type}")
    if tensor.raw_data:
        flat = np.frombuffer(tensor.raw_data, dtype=dtype)
    elif tensor.data_type == FLOAT:
        flat = np.asarray(tensor.float_data, dtype=np.float32)
    else:
        raise HeadNotSupported(f"tensor {tensor.name!r} is not stored as raw data or floats")
    return flat.reshape(tuple(tensor.dims))


def _attributes(node: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == _ATTR_FLOAT:
            values[a.name] = a.f
        elif a.type == _ATTR_INT:
            values[a.name] = a.i
        elif a.type == _ATTR_INTS:
            values[a.name] = list(a.ints)
        elif a.type == _ATTR_TENSOR:
            values[a.name] = a.t
    return values


def find_head(model_bytes: bytes) -> ActivationHead:
    """The feature tensor, weight and bias of a serialised ModelProto whose head is global
    average pooling (GlobalAveragePool, or ReduceMean over axes 2 and 3), optional
    Flatten/Reshape/Squeeze, one linear layer (Gemm, or MatMul with an optional Add) and an
    optional Softmax; HeadNotSupported, saying what the head is, for any other model."""
    graph = parse(model_bytes).graph
    constants = {t.name: t for t in graph.initializer}
    producer: dict[str, Any] = {}
    for node in graph.node:
        for name in node.output:
            producer[name] = node
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _attributes(node).get("value")
            if value is not None:
                constants[node.output[0]] = value
    if len(graph.output) != 1:
        raise HeadNotSupported(f"the model has {len(graph.output)} outputs, not one")

    found: list[str] = []

    def refuse(why: str) -> HeadNotSupported:
        chain = " <- ".join(found) or "nothing"
        return HeadNotSupported(
            f"head is not global pooling + one linear layer: {why} (from the output back: {chain})"
        )

    def step(tensor: str) -> Any:
        node = producer.get(tensor)
        if node is None:
            raise refuse(f"{tensor!r} is a graph input, not computed by the head")
        if node.domain not in ("", "ai.onnx"):
            found.append(f"{node.domain}.{node.op_type}")
            raise refuse(f"{node.op_type} is in domain {node.domain!r}")
        found.append(node.op_type)
        return node

    def constant(name: str, what: str) -> np.ndarray:
        if name not in constants:
            raise refuse(f"the {what} {name!r} is computed, not a constant")
        return _array(constants[name]).astype(np.float32)

    node = step(graph.output[0].name)
    if node.op_type == "Softmax":
        node = step(node.input[0])
    bias: np.ndarray | None = None
    if node.op_type == "Gemm":
        attrs = _attributes(node)
        if attrs.get("transA", 0):
            raise refuse("Gemm transposes its input (transA)")
        weight = constant(node.input[1], "weight") * np.float32(attrs.get("alpha", 1.0))
        if not attrs.get("transB", 0):
            weight = weight.T
        if len(node.input) > 2 and node.input[2]:
            bias = constant(node.input[2], "bias") * np.float32(attrs.get("beta", 1.0))
    else:
        if node.op_type == "Add":
            a, b = node.input
            bias_name, node_input = (b, a) if b in constants else (a, b)
            bias = constant(bias_name, "bias")
            node = step(node_input)
        if node.op_type != "MatMul":
            raise refuse(f"the last layer is {node.op_type}, not Gemm or MatMul")
        weight = constant(node.input[1], "weight").T
    if weight.ndim != 2:
        raise refuse(f"the linear layer's weight has shape {weight.shape}")
    classes = weight.shape[0]
    bias = np.zeros(classes, np.float32) if bias is None else bias.reshape(-1)
    if bias.size == 1:
        bias = np.full(classes, bias[0], np.float32)
    if bias.shape != (classes,):
        raise refuse(f"the bias has shape {bias.shape} for {classes} classes")

    node = step(node.input[0])
    while node.op_type in _PASS_THROUGH:
        node = step(node.input[0])
    if node.op_type == "ReduceMean":
        axes = _attributes(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = constant(node.input[1], "axes").astype(np.int64).tolist()
        if sorted(a % 4 for a in (axes or [])) != [2, 3]:
            raise refuse(f"ReduceMean over axes {axes}, not the spatial axes 2 and 3")
    elif node.op_type != "GlobalAveragePool":
        raise refuse(f"the layer before the linear one is {node.op_type}, not global pooling")
    return ActivationHead(
        feature=node.input[0],
        weight=np.ascontiguousarray(weight, dtype=np.float32),
        bias=np.ascontiguousarray(bias, dtype=np.float32),
    )


def with_output(model_bytes: bytes, tensor: str) -> bytes:
    """The serialised model with `tensor` added to the graph's outputs (every other field as
    it was); a no-op if it is an output already."""
    model = parse(model_bytes)
    if tensor not in {o.name for o in model.graph.output}:
        model.graph.output.add(name=tensor)
    return model.SerializeToString()


def explaining_session(
    model_bytes: bytes,
    head: ActivationHead,
    options: ort.SessionOptions | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """An ONNX Runtime session of the model that also returns `head.feature`."""
    return ort.InferenceSession(
        with_output(model_bytes, head.feature), sess_options=options, providers=list(providers)
    )


def raw_maps(features: np.ndarray, weight: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """float32 [N, k, h, w]: sum_c weight[classes[n, j], c] * features[n, c] for features
    [N, C, h, w] and class indices [N, k] (no ReLU, no normalisation; its spatial mean plus the
    bias is the class's logit)."""
    classes = np.asarray(classes, dtype=np.int64)
    if classes.ndim != 2 or classes.shape[0] != features.shape[0]:
        raise ValueError(f"classes must be [N, k] for N={features.shape[0]}, got {classes.shape}")
    if features.ndim != 4 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features must be [N, {weight.shape[1]}, h, w] for this head, got {features.shape}"
        )
    rows = weight[classes]  # [N, k, C]
    return np.einsum("nkc,nchw->nkhw", rows, features.astype(np.float32, copy=False))


def class_maps(features: np.ndarray, weight: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """float32 [N, k, h, w] class activation maps at the feature resolution: `raw_maps`,
    ReLU, divided by each map's maximum (a map with no positive value is all zeros)."""
    maps = np.maximum(raw_maps(features, weight, classes), 0.0)
    peak = maps.max(axis=(2, 3), keepdims=True)
    np.divide(maps, peak, out=maps, where=peak > 0)
    return maps


def crop_box(width: int, height: int, spec: Preprocessing) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in the pixels of an upright image of width x height that the
    model sees (and that a map covers): the center crop of the resized image
    (imaging.resize_and_crop), mapped back to the original image."""
    crop_h, crop_w = spec.input_size
    new_w, new_h = resized_size(width, height, spec.resize_size)
    top = round((new_h - crop_h) / 2.0)
    left = round((new_w - crop_w) / 2.0)
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
