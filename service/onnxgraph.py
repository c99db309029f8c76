"""The ONNX graph as protobuf messages, without the `onnx` package.

ONNX Runtime's Python package has no ONNX protobuf classes and the serving install has no
`onnx`, so the few ModelProto fields imgclf reads (initializers for the shared weights in
imgclf.runtime.sharedweights; nodes, attributes and outputs for the class activation maps in
imgclf.models.cam; metadata_props for imgclf.models.variants) are declared here and built
with google.protobuf. A parse keeps every field it does not know as an unknown field and
writes it back unchanged, so a model edited through these messages is the original plus the
edit.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FLOAT = 1
"""TensorProto.FLOAT."""

# ONNX TensorProto.DataType -> numpy dtype (the types a classifier's weights come in).
DTYPES: dict[int, Any] = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}


@functools.cache
def model_proto() -> type:
    """A ModelProto class that knows only the fields read here; others stay unknown fields."""
    f = descriptor_pb2.FileDescriptorProto(
        name="imgclf_onnx_graph.proto", package="imgclf_onnx_graph", syntax="proto2"
    )
    label = descriptor_pb2.FieldDescriptorProto
    messages = {
        "TensorProto": (
            ("dims", 1, label.TYPE_INT64, True),
            ("data_type", 2, label.TYPE_INT32, False),
            ("float_data", 4, label.TYPE_FLOAT, True),
            ("name", 8, label.TYPE_STRING, False),
            ("raw_data", 9, label.TYPE_BYTES, False),
            ("data_location", 14, label.TYPE_INT32, False),
        ),
        "AttributeProto": (
            ("name", 1, label.TYPE_STRING, False),
            ("f", 2, label.TYPE_FLOAT, False),
            ("i", 3, label.TYPE_INT64, False),
            ("t", 5, "TensorProto", False),
            ("ints", 8, label.TYPE_INT64, True),
            ("type", 20, label.TYPE_INT32, False),
        ),
        "NodeProto": (
            ("input", 1, label.TYPE_STRING, True),
            ("output", 2, label.TYPE_STRING, True),
            ("name", 3, label.TYPE_STRING, False),
            ("op_type", 4, label.TYPE_STRING, False),
            ("attribute", 5, "AttributeProto", True),
            ("domain", 7, label.TYPE_STRING, False),
        ),
        "ValueInfoProto": (("name", 1, label.TYPE_STRING, False),),
        "GraphProto": (
            ("node", 1, "NodeProto", True),
            ("initializer", 5, "TensorProto", True),
            ("output", 12, "ValueInfoProto", True),
        ),
        "StringStringEntryProto": (
            ("key", 1, label.TYPE_STRING, False),
            ("value", 2, label.TYPE_STRING, False),
        ),
        "ModelProto": (
            ("graph", 7, "GraphProto", False),
            ("metadata_props", 14, "StringStringEntryProto", True),
        ),
    }
    for message, fields in messages.items():
        proto = f.message_type.add(name=message)
        for name, number, kind, repeated in fields:
            field = proto.field.add(
                name=name,
                number=number,
                label=label.LABEL_REPEATED if repeated else label.LABEL_OPTIONAL,
            )
            if isinstance(kind, str):
                field.type = label.TYPE_MESSAGE
                field.type_name = f".imgclf_onnx_graph.{kind}"
            else:
                field.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClassesForFiles([f.name], pool)["imgclf_onnx_graph.ModelProto"]


def parse(model_bytes: bytes) -> Any:
    """A serialised ModelProto as a message of `model_proto`'s class."""
    model = model_proto()()
    model.ParseFromString(model_bytes)
    return model


def metadata_props(path: str | Path) -> dict[str, str]:
    """The metadata_props of the ONNX file at `path` (key -> value, as written)."""
    return {p.key: p.value for p in parse(Path(path).read_bytes()).metadata_props}
