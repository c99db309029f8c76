"""The HTTP infer body <-> ModelInferRequest/Response codec (Triton's binary tensor data)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from imgclf._generated.inference import grpc_service_pb2 as pb
from imgclf.bytestensor import serialize_bytes_elements
from imgclf.errors import InvalidInput
from imgclf.http.codec import infer_response_body, parse_infer_request


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def test_binary_inputs_and_output_flags() -> None:
    x = np.arange(6, dtype="<f4").reshape(1, 6)
    body, length = binary_body(
        {
            "id": "7",
            "parameters": {"timeout": 5, "priority": 1, "binary_data_output": True},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 6],
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2,
                                                                 "binary_data": True}}],
        },
        x.tobytes(),
    )  # fmt: skip
    parsed = parse_infer_request(body, length, "m", "2")
    r = parsed.request
    assert (r.model_name, r.model_version, r.id) == ("m", "2", "7")
    assert r.parameters["timeout"].int64_param == 5 and "binary_data_output" not in r.parameters
    assert r.raw_input_contents == [x.tobytes()] and list(r.inputs[0].shape) == [1, 6]
    assert r.outputs[0].parameters["classification"].int64_param == 2
    assert "binary_data" not in r.outputs[0].parameters
    assert parsed.all_binary and parsed.binary_outputs == {"probabilities"}


def test_json_inputs_nested_numbers_bytes_and_fp16() -> None:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2, 2],
                       "data": [[[1, 2], [3, 4.5]]]}]}  # fmt: skip
    r = parse_infer_request(json.dumps(doc).encode(), None, "m", "").request
    assert list(r.inputs[0].contents.fp32_contents) == [1, 2, 3, 4.5]
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    r = parse_infer_request(json.dumps(doc).encode(), None, "m", "").request
    assert list(r.inputs[0].contents.bytes_contents) == [b"a", b"b"]
    doc = {"inputs": [{"name": "input", "datatype": "FP16", "shape": [2], "data": [0.5, 2]}]}
    r = parse_infer_request(json.dumps(doc).encode(), None, "m", "").request
    assert r.raw_input_contents == [np.array([0.5, 2], dtype="<f2").tobytes()]


@pytest.mark.parametrize(
    ("body", "length", "fragment"),
    [
        (b'{"inputs": []}', "99", "body holds 14 bytes"),
        (b'{"inputs": []}', "ten", "must be an integer"),
        (b"{not json", None, "not valid JSON"),
        (b"[1]", None, "must be a JSON object"),
        (b'{"inputs": {}}', None, "'inputs' must be a JSON array"),
        (*binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                   "parameters": {"binary_data_size": 8}}]}, b"\0" * 4),
         "runs past the end"),
        (*binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                   "parameters": {"binary_data_size": 4}}]}, b"\0" * 9),
         "5 bytes after the binary tensor data"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None,
         "neither 'data' nor 'binary_data_size'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [[1], 2]}]}',
         None, "array of numbers of one shape"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
         None, "non-negative integers"),
        (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1.5]}]}',
         None, "must be integers"),
        (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}]}',
         None, "not supported"),
        (b'{"inputs": [], "parameters": {"p": [1]}}', None, "boolean, number or string"),
    ],
)  # fmt: skip
def test_malformed_requests_are_invalid_input(body: bytes, length: str | None,
                                              fragment: str) -> None:  # fmt: skip
    with pytest.raises(InvalidInput) as info:
        parse_infer_request(body, length, "m", "")
    assert fragment in str(info.value)


def test_response_binary_and_json() -> None:
    probs = np.array([[0.25, 0.75]], dtype="<f4")
    classes = serialize_bytes_elements([b"0.75:1:b"])
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="x")
    response.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
    response.outputs.add(name="logits", datatype="BYTES", shape=[1, 1])
    response.raw_output_contents.extend([probs.tobytes(), classes])
    request = parse_infer_request(b'{"inputs": []}', None, "m", "")
    body, length = infer_response_body(response, request)
    assert length is None
    doc = json.loads(body)
    assert doc["id"] == "x" and doc["outputs"][0]["data"] == [0.25, 0.75]
    assert doc["outputs"][1]["data"] == ["0.75:1:b"]
    request.binary_outputs.add("probabilities")
    body, length = infer_response_body(response, request)
    assert length is not None and body[length:] == probs.tobytes()
    head = json.loads(body[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert struct.unpack("<I", classes[:4])[0] == 8 and "data" in head["outputs"][1]
