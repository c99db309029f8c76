"""Open Inference Protocol tensors <-> core objects.

Inputs a classifier accepts (one input per request):
- the model's tensor input, FP32 / FP16 (preprocessed, NCHW) or UINT8 (pixels, NCHW, the
  server normalises), shape [N, 3, H, W], in `raw_input_contents` or typed `contents`; for
  a model that normalises in its graph, UINT8 pixels [N, H, W, 3] only;
- a BYTES input named `image`, shape [N] or [N, 1], one encoded image per element, decoded
  server-side with the model's own preprocessing.
BYTES elements on the wire: each is a 4-byte little-endian length, then the bytes.

Class activation maps: a requested output `cam` (parameter `classes`: maps of each image's
top that many classes, default 1) answers FP32 [N, k, h, w], with `cam_index` (INT32 [N, k],
the classes mapped) and `cam_box` (FP32 [N, 4], the region of each image a map covers:
left, top, right, bottom in the image's pixels) alongside.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from imgclf._generated.inference import grpc_service_pb2 as pb
from imgclf.dataplane import ImageInput
from imgclf.errors import InvalidInput
from imgclf.explain import NO_EXPLAIN, ExplainRequest, Explanation

IMAGE_INPUT = "image"
PROBABILITIES_OUTPUT = "probabilities"
NUMPY_OF = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2"), "UINT8": np.dtype("u1")}
TYPED_FIELD = {"FP32": "fp32_contents", "UINT8": "uint_contents"}
CAM_OUTPUT, CAM_INDEX_OUTPUT, CAM_BOX_OUTPUT = "cam", "cam_index", "cam_box"
CAM_OUTPUTS = (CAM_OUTPUT, CAM_INDEX_OUTPUT, CAM_BOX_OUTPUT)
"""Requesting any of them (as clients that request every output in the metadata do)
returns all three."""
CAM_CLASSES = "classes"


def parse_bytes_elements(raw: bytes, limit: int | None = None) -> list[bytes]:
    """Split a raw BYTES tensor into its elements (length-prefixed, little-endian); with
    `limit`, refuse data holding more elements than that without parsing past it."""
    out: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if limit is not None and len(out) >= limit:
            raise InvalidInput(f"BYTES tensor holds more than the {limit} elements its shape "
                               "declares", reason="bad_tensor")  # fmt: skip
        if offset + 4 > len(raw):
            raise InvalidInput(
                "BYTES tensor is truncated in an element length", reason="bad_tensor"
            )
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput("BYTES tensor element runs past the end of the data",
                               reason="bad_tensor")  # fmt: skip
        out.append(bytes(view[offset : offset + size]))
        offset += size
    return out


def decode_images(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, max_batch_size: int
) -> list[bytes]:
    """The encoded images of a BYTES input (at most `max_batch_size`, checked first)."""
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {IMAGE_INPUT!r} must be BYTES, got {tensor.datatype}",
                           reason="bad_tensor")  # fmt: skip
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InvalidInput(f"input {IMAGE_INPUT!r} must have shape [N] or [N, 1], got {shape}",
                           reason="bad_shape")  # fmt: skip
    if shape[0] > max_batch_size:
        raise InvalidInput(
            f"batch of {shape[0]} is larger than the model's max batch size of {max_batch_size}",
            reason="batch_too_large",
        )
    if raw is not None:
        images = parse_bytes_elements(raw, limit=shape[0])
    else:
        images = list(tensor.contents.bytes_contents)
    if len(images) != shape[0]:
        raise InvalidInput(f"input {IMAGE_INPUT!r} has shape {shape} but carries {len(images)} "
                           "elements", reason="bad_tensor")  # fmt: skip
    return images


def decode_tensor(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """A numeric input tensor -> float32 array (FP16 widened) or uint8 pixels, shape kept."""
    dtype = NUMPY_OF.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"input {tensor.name!r}: datatype {tensor.datatype} is not supported; "
                           "send FP32, FP16 or UINT8", reason="bad_dtype")  # fmt: skip
    shape = tuple(tensor.shape)
    if not shape or any(d < 1 for d in shape):
        raise InvalidInput(
            f"input {tensor.name!r}: invalid shape {list(shape)}", reason="bad_shape"
        )
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {tensor.name!r}: shape {list(shape)} {tensor.datatype} needs "
                f"{count * dtype.itemsize} bytes, got {len(raw)}",
                reason="bad_tensor",
            )
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    else:
        field = TYPED_FIELD.get(tensor.datatype)
        values = getattr(tensor.contents, field) if field else ()
        if len(values) != count:
            raise InvalidInput(
                f"input {tensor.name!r}: shape {list(shape)} needs {count} values, got "
                f"{len(values)}" + ("" if field else " (FP16 travels in raw_input_contents)"),
                reason="bad_tensor",
            )
        array = np.asarray(values, dtype=np.float32 if field == "fp32_contents" else np.int64)
        if tensor.datatype == "UINT8":
            if array.min() < 0 or array.max() > 255:
                raise InvalidInput(f"input {tensor.name!r}: UINT8 values out of range",
                                   reason="bad_tensor")  # fmt: skip
            array = array.astype(np.uint8)
        array = array.reshape(shape)
    return array.astype(np.float32) if tensor.datatype == "FP16" else array


def request_images(
    request: pb.ModelInferRequest, input_name: str, max_batch_size: int
) -> list[ImageInput]:
    """The request's single input as one ImageInput per batch row."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly 1 input, got {len(request.inputs)}",
                           reason="bad_input_count")  # fmt: skip
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for "
            f"{len(request.inputs)} inputs",
            reason="bad_tensor",
        )
    tensor = request.inputs[0]
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    if tensor.name == IMAGE_INPUT:
        images = [ImageInput(encoded=data) for data in decode_images(tensor, raw, max_batch_size)]
    elif tensor.name == input_name:
        array = decode_tensor(tensor, raw)
        if array.ndim != 4:
            raise InvalidInput(f"input {tensor.name!r} must be [N, 3, H, W] ([N, H, W, 3] for "
                               f"a pixel-input model), got {list(array.shape)}",
                               reason="bad_shape")  # fmt: skip
        key = "pixels" if array.dtype == np.uint8 else "tensor"
        images = [ImageInput(**{key: row}) for row in array]
    else:
        raise InvalidInput(
            f"unknown input {tensor.name!r}; this model takes {input_name!r} (a tensor in its "
            f"input layout, see its metadata) or {IMAGE_INPUT!r} (BYTES, encoded images)",
            reason="unknown_input",
        )
    if len(images) > max_batch_size:
        raise InvalidInput(
            f"batch of {len(images)} is larger than the model's max batch size of {max_batch_size}",
            reason="batch_too_large",
        )
    return images


def classification_strings(values: np.ndarray, k: int, labels: list[str]) -> list[list[bytes]]:
    """Triton's classification extension: per row the top k as b"score:index:label"."""
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return [
        [f"{row[i]:f}:{i}:{labels[i]}".encode() for i in idx]
        for row, idx in zip(values, order, strict=True)
    ]


def requested_explain(request: pb.ModelInferRequest) -> ExplainRequest:
    """The maps a request asks for through its `cam` outputs (none when not requested)."""
    asked = [out for out in request.outputs if out.name in CAM_OUTPUTS]
    if not asked:
        return NO_EXPLAIN
    classes = 1
    for out in asked:
        for key, value in out.parameters.items():
            kind = value.WhichOneof("parameter_choice")
            v = getattr(value, kind) if kind else None
            if key == CAM_CLASSES:
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise InvalidInput(f"output parameter {CAM_CLASSES!r} of {CAM_OUTPUT!r} "
                                       "must be an integer >= 1", reason="bad_explain")  # fmt: skip
                classes = v
            elif key != "binary_data":
                raise InvalidInput(f"unknown output parameter {key!r} of {out.name!r}",
                                   reason="unknown_parameter")  # fmt: skip
    return ExplainRequest(top_k=classes)


def add_cam_outputs(response: pb.ModelInferResponse, explanations: list[Explanation]) -> None:
    """`cam`, `cam_index` and `cam_box` for every image of the batch."""
    maps = np.stack([[m.values for m in e.maps] for e in explanations]).astype("<f4")
    index = np.asarray([[m.index for m in e.maps] for e in explanations], dtype="<i4")
    box = np.asarray([e.maps[0].box for e in explanations], dtype="<f4")
    for name, datatype, values in (
        (CAM_OUTPUT, "FP32", maps),
        (CAM_INDEX_OUTPUT, "INT32", index),
        (CAM_BOX_OUTPUT, "FP32", box),
    ):
        response.outputs.add(name=name, datatype=datatype, shape=list(values.shape))
        response.raw_output_contents.append(np.ascontiguousarray(values).tobytes())
