"""The bench's HTTP requests are what the server's codec reads; the HTTP/gRPC ratio table."""

from __future__ import annotations

import json

import numpy as np

from imgclf.client.bench import http_wire
from imgclf.client.bench.runner import protocol_ratios
from imgclf.grpc.oip_tensors import parse_bytes_elements
from imgclf.http.codec import parse_infer_request


def split(request: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/models/m/infer HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return headers, body


def test_tensor_requests_parse_as_the_server_reads_them() -> None:
    items = [np.full((3, 4, 4), i, dtype=np.float32) for i in range(3)]
    path, payloads = http_wire.build_http_payloads("m", items, 2, "h:1", output_name="logits",
                                                   token="t")  # fmt: skip
    assert path == "/v2/models/m/infer" and len(payloads) == 3
    headers, body = split(payloads[2])
    assert headers["Authorization"] == "Bearer t"
    parsed = parse_infer_request(body, headers["Inference-Header-Content-Length"], "m", "")
    (raw,) = parsed.request.raw_input_contents
    expected = np.stack([items[2], items[0]]).astype("<f4").tobytes()
    assert raw == expected and list(parsed.request.inputs[0].shape) == [2, 3, 4, 4]
    assert parsed.binary_outputs == {"logits"}


def test_jpeg_requests_carry_bytes_elements() -> None:
    _, payloads = http_wire.build_http_payloads("m", [b"\xff\xd8a", b"\xff\xd8bc"], 1, "h:1")
    headers, body = split(payloads[1])
    parsed = parse_infer_request(body, headers["Inference-Header-Content-Length"], "m", "")
    assert parse_bytes_elements(parsed.request.raw_input_contents[0]) == [b"\xff\xd8bc"]
    assert parsed.all_binary


def test_check_http_reply() -> None:
    head = json.dumps({"outputs": [{"name": "p", "shape": [2, 10],
                                    "parameters": {"binary_data_size": 80}}]}).encode()  # fmt: skip
    assert http_wire.check_http_reply(200, head + bytes(80), 2) is None
    assert "shape [2, 10]" in (http_wire.check_http_reply(200, head + bytes(80), 1) or "")
    assert "HTTP 400" in (http_wire.check_http_reply(400, b'{"error": "x"}', 1) or "")


def test_protocol_ratios_pair_each_round() -> None:
    def point(label: str, protocol: str, ips: float) -> dict:
        return {"load": f"{label} {protocol}", "protocol": protocol,
                "summary": {"throughput_ips": ips}}  # fmt: skip

    rounds = [
        [point("c=1", "grpc", 10), point("c=1", "http", 9)],
        [point("c=1", "grpc", 20), point("c=1", "http", 20)],
        [point("c=1", "grpc", 10), point("c=1", "http", 5)],
    ]
    (ratio,) = protocol_ratios(rounds)
    assert ratio["load"] == "c=1" and ratio["rounds"] == [0.9, 1.0, 0.5]
    assert ratio["http_over_grpc"] == 0.9
