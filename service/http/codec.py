"""Open Inference Protocol over HTTP <-> the protobuf messages the inference servicer runs.

An HTTP infer request is a JSON document, optionally followed by binary tensor data (Triton's
binary tensor data extension): the header `Inference-Header-Content-Length` gives the JSON's
length, and every input with the parameter `binary_data_size` takes that many bytes, in input
order, from what follows it (BYTES elements length-prefixed, as over gRPC). Inputs without it
carry their values in `data` (numbers, nested or flat; BYTES as strings).

Outputs travel as binary when the output asks for it (`binary_data: true`) or the request
does (`binary_data_output: true`); otherwise as JSON `data`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf._generated.inference import grpc_service_pb2 as pb
from imgclf.errors import InvalidInput
from imgclf.grpc.oip_tensors import NUMPY_OF, parse_bytes_elements

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data_output"

Tensor = pb.ModelInferRequest.InferInputTensor


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, reason="bad_http_request")


def _set_param(target: Any, key: str, value: object) -> None:
    """One JSON parameter value into an InferParameter map entry."""
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise _bad(f"parameter {key!r} is out of the 64-bit range")
        target[key].int64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    elif isinstance(value, str):
        target[key].string_param = value
    else:
        raise _bad(f"parameter {key!r} must be a boolean, number or string")


def _dict(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object")
    return value


def _shape(value: object, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in value
    ):
        raise _bad(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return value


def _json_values(tensor: Tensor, data: object) -> None:
    """The JSON `data` of an input into the tensor's typed contents (FP16 goes into the
    FP32 field here; _fp16_to_raw then moves it to raw bytes, as the servicer reads FP16)."""
    name = tensor.name
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: 'data' must be a JSON array")
    if tensor.datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(e, str) for e in flat):
            raise _bad(f"input {name!r}: BYTES data must be strings")
        tensor.contents.bytes_contents.extend(e.encode() for e in flat)
        return
    try:
        array = np.asarray(data, dtype=np.float64).ravel()
    except (ValueError, TypeError):
        raise _bad(f"input {name!r}: 'data' must be an array of numbers of one shape") from None
    if tensor.datatype == "UINT8":
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise _bad(f"input {name!r}: UINT8 data must be integers")
        tensor.contents.uint_contents.extend(array.astype(np.int64).tolist())
    elif tensor.datatype in ("FP32", "FP16"):
        tensor.contents.fp32_contents.extend(array.tolist())
    else:
        raise _bad(
            f"input {name!r}: datatype {tensor.datatype} is not supported; send FP32, "
            "FP16, UINT8 or BYTES"
        )


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


@dataclass
class HttpInferRequest:
    request: pb.ModelInferRequest
    binary_outputs: set[str]
    """Outputs to send as binary tensor data."""
    all_binary: bool
    """binary_data_output: every output as binary."""


def parse_infer_request(
    body: bytes, header_length: str | None, model: str, version: str
) -> HttpInferRequest:
    """An HTTP infer body (JSON, or JSON + binary tensor data) -> a ModelInferRequest."""
    doc, json_length = _json_header(body, header_length)
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    if "id" in doc:
        if not isinstance(doc["id"], str):
            raise _bad("'id' must be a string")
        request.id = doc["id"]
    params = _dict(doc.get("parameters"), "'parameters'")
    all_binary = bool(params.pop(BINARY_OUTPUT, False))
    for key, value in params.items():
        _set_param(request.parameters, key, value)
    _add_inputs(request, doc.get("inputs"), body, json_length)
    _fp16_to_raw(request)
    binary_outputs = _add_outputs(request, doc.get("outputs", []))
    return HttpInferRequest(request, binary_outputs, all_binary)


def _json_header(body: bytes, header_length: str | None) -> tuple[dict, int]:
    """The JSON object that opens the body, and its length (the whole body without the
    Inference-Header-Content-Length header)."""
    if header_length is not None:
        try:
            json_length = int(header_length)
        except ValueError:
            raise _bad(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= json_length <= len(body):
            raise _bad(f"{HEADER_LENGTH} is {json_length} but the body holds {len(body)} bytes")
    else:
        json_length = len(body)
    try:
        doc = json.loads(bytes(memoryview(body)[:json_length]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"request header is not valid JSON: {exc}") from None
    return _dict(doc, "the request"), json_length


def _add_inputs(request: pb.ModelInferRequest, inputs: object, body: bytes, offset: int) -> None:
    """The request's inputs: JSON `data`, or binary tensor data that follows the JSON at
    `offset` in `body` (every byte of it claimed by an input, all inputs binary or none)."""
    if not isinstance(inputs, list):
        raise _bad("'inputs' must be a JSON array")
    view = memoryview(body)
    raws: list[bytes] = []
    for i, spec in enumerate(inputs):
        spec = _dict(spec, f"input {i}")
        name, datatype = spec.get("name"), spec.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise _bad(f"input {i}: 'name' and 'datatype' must be strings")
        tensor = request.inputs.add(
            name=name, datatype=datatype, shape=_shape(spec.get("shape"), name)
        )
        in_params = _dict(spec.get("parameters"), f"input {name!r} parameters")
        size = in_params.pop(BINARY_SIZE, None)
        for key, value in in_params.items():
            _set_param(tensor.parameters, key, value)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(f"input {name!r}: {BINARY_SIZE} must be a non-negative integer")
            if offset + size > len(body):
                raise _bad(
                    f"input {name!r}: {BINARY_SIZE} {size} runs past the end of the "
                    f"body ({len(body) - offset} bytes left)"
                )
            raws.append(bytes(view[offset : offset + size]))
            offset += size
        elif "data" in spec:
            _json_values(tensor, spec["data"])
        else:
            raise _bad(f"input {name!r} has neither 'data' nor '{BINARY_SIZE}'")
    if offset != len(body):
        raise _bad(
            f"the body holds {len(body) - offset} bytes after the binary tensor data "
            "the inputs declare"
        )
    if raws and len(raws) != len(request.inputs):
        raise _bad("mixing binary and JSON inputs in one request is not supported")
    request.raw_input_contents.extend(raws)


def _add_outputs(request: pb.ModelInferRequest, outputs: object) -> set[str]:
    """The outputs the request asks for; returns the names asked for as binary data."""
    if not isinstance(outputs, list):
        raise _bad("'outputs' must be a JSON array")
    binary_outputs: set[str] = set()
    for i, spec in enumerate(outputs):
        spec = _dict(spec, f"output {i}")
        name = spec.get("name")
        if not isinstance(name, str):
            raise _bad(f"output {i}: 'name' must be a string")
        out = request.outputs.add(name=name)
        out_params = _dict(spec.get("parameters"), f"output {name!r} parameters")
        if out_params.pop("binary_data", False) is True:
            binary_outputs.add(name)
        for key, value in out_params.items():
            _set_param(out.parameters, key, value)
    return binary_outputs


def _fp16_to_raw(request: pb.ModelInferRequest) -> None:
    """FP16 given as JSON numbers travels as raw bytes (the protobuf has no FP16 field)."""
    if request.raw_input_contents or not any(t.datatype == "FP16" for t in request.inputs):
        return
    for tensor in request.inputs:
        values = tensor.contents.fp32_contents
        if math.prod(tensor.shape) != len(values):
            raise InvalidInput(
                f"input {tensor.name!r}: shape {list(tensor.shape)} needs "
                f"{math.prod(tensor.shape)} values, got {len(values)}",
                reason="bad_tensor",
            )
        raw = np.asarray(values, dtype=np.float32).astype("<f2").tobytes()
        tensor.ClearField("contents")
        request.raw_input_contents.append(raw)


def _output_data(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        return [e.decode(errors="replace") for e in parse_bytes_elements(raw)]
    dtype = np.dtype("<i4") if datatype == "INT32" else NUMPY_OF[datatype]
    return np.frombuffer(raw, dtype=dtype).tolist()


def infer_response_body(
    response: pb.ModelInferResponse, parsed: HttpInferRequest
) -> tuple[bytes, int | None]:
    """(body, JSON header length when binary data follows it, else None)."""
    outputs = []
    blobs: list[bytes] = []
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.shape),
        }
        if parsed.all_binary or out.name in parsed.binary_outputs:
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _output_data(out.datatype, raw)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        doc["id"] = response.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
