"""Our Open Inference Protocol stubs are wire-compatible with the real tritonclient.

proto/inference/{grpc_service,model_config}.proto are our own rewrite of the published KServe v2 /
Triton definitions. tritonclient (and perf_analyzer, built from the same files) must be able to talk
to our server unchanged, so the two schemas must agree on every name and number that reaches the
wire or a method path.

Both sides register the same message names in protobuf's default descriptor pool, so they never
share an interpreter: wire_helper.py runs each step in a subprocess that imports one side only,
and this module compares what they report (JSON) and exchanges serialized bytes through tmp_path.

Rules checked:
- every service/method, message (nested and map entries included), field and enum tritonclient has
  exists in ours with the same name, number, type, label, referenced type, oneof and presence;
- ours adds nothing, except the fields Triton added upstream after the tritonclient pinned here
  (NEWER_UPSTREAM below, each with its upstream number);
- a request built by tritonclient's own request builder parses with our classes to the same values
  and re-serializes byte for byte; responses built with our classes parse in tritonclient, and its
  InferResult decodes the tensors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
SERVICE = "inference.GRPCInferenceService"

# Present in current upstream Triton (checked against tritonclient 2.73's embedded descriptors)
# but not in older tritonclient releases such as the 2.41 pinned in this venv. Ours may carry
# exactly these beyond what the installed tritonclient knows; anything else is a local invention
# that could collide with a future upstream number.
NEWER_UPSTREAM_MESSAGES = {
    "inference.InferResponseStatistics",
    "inference.ModelStatistics.ResponseStatsEntry",
    "inference.ModelMetrics",
    "inference.ModelMetrics.MetricControl",
    "inference.ModelMetrics.MetricControl.MetricIdentifier",
    "inference.ModelMetrics.MetricControl.HistogramOptions",
}
NEWER_UPSTREAM_FIELDS = {
    ("inference.ModelStatistics", "response_stats", 9),
    ("inference.ModelConfig", "runtime", 25),
    ("inference.ModelConfig", "model_metrics", 26),
    ("inference.ModelInput", "is_non_linear_format_io", 9),
    ("inference.ModelOutput", "is_non_linear_format_io", 7),
    ("inference.ModelEnsembling", "max_inflight_requests", 2),
}


def _helper(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.unit.proto.wire_helper", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"wire_helper {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return {side: json.loads(_helper("dump", side)) for side in ("triton", "ours")}


def _fields_by_number(message: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {f["number"]: f for f in message["fields"]}


def test_both_sides_are_package_inference(schemas: dict[str, dict[str, Any]]) -> None:
    ours = schemas["ours"]["files"]
    assert set(ours) == {"inference/grpc_service.proto", "inference/model_config.proto"}
    assert ours["inference/grpc_service.proto"]["dependencies"] == ["inference/model_config.proto"]
    for side in schemas.values():
        assert {f["package"] for f in side["files"].values()} == {"inference"}
    # Every type lives in package inference, so full names (and method paths) can match.
    for side in schemas.values():
        assert all(name.startswith("inference.") for name in side["messages"])


def test_service_methods_are_identical(schemas: dict[str, dict[str, Any]]) -> None:
    theirs = schemas["triton"]["services"]
    ours = schemas["ours"]["services"]
    assert set(theirs) == {SERVICE}
    assert set(ours) == {SERVICE}
    # Method paths /inference.GRPCInferenceService/<name> and their message types and streaming
    # kinds must agree exactly: a missing RPC is an UNIMPLEMENTED we did not choose, an extra one
    # is a name Triton might later use differently.
    assert ours[SERVICE] == theirs[SERVICE]
    assert {"ModelInfer", "ModelStreamInfer", "ModelConfig", "LogSettings"} <= set(ours[SERVICE])
    assert ours[SERVICE]["ModelStreamInfer"]["client_streaming"] is True
    assert ours[SERVICE]["ModelStreamInfer"]["server_streaming"] is True


def test_every_tritonclient_message_has_identical_fields(
    schemas: dict[str, dict[str, Any]],
) -> None:
    theirs = schemas["triton"]["messages"]
    ours = schemas["ours"]["messages"]
    problems = []
    for name, message in sorted(theirs.items()):
        if name not in ours:
            problems.append(f"{name}: missing")
            continue
        mine = ours[name]
        if mine["map_entry"] != message["map_entry"]:
            problems.append(f"{name}: map_entry {mine['map_entry']} != {message['map_entry']}")
        if not set(message["oneofs"]) <= set(mine["oneofs"]):
            problems.append(f"{name}: oneofs {mine['oneofs']} lack some of {message['oneofs']}")
        our_fields = _fields_by_number(mine)
        our_names = {f["name"]: f["number"] for f in mine["fields"]}
        for number, field in _fields_by_number(message).items():
            if our_fields.get(number) != field:
                problems.append(f"{name}.{field['name']}: ours {our_fields.get(number)} != {field}")
            if our_names.get(field["name"]) != number:
                problems.append(
                    f"{name}.{field['name']}: ours numbers it {our_names.get(field['name'])}"
                )
    assert not problems, "\n".join(problems)


def test_every_tritonclient_enum_has_identical_values(
    schemas: dict[str, dict[str, Any]],
) -> None:
    theirs = schemas["triton"]["enums"]
    ours = schemas["ours"]["enums"]
    assert "inference.DataType" in theirs
    for name, values in theirs.items():
        assert ours.get(name) == values, f"{name}: ours {ours.get(name)} != tritonclient {values}"
    # No enum of ours is unknown to tritonclient (upstream added none since).
    assert set(ours) == set(theirs)


def test_our_additions_are_only_newer_upstream_fields(
    schemas: dict[str, dict[str, Any]],
) -> None:
    theirs = schemas["triton"]["messages"]
    ours = schemas["ours"]["messages"]
    extra_messages = set(ours) - set(theirs)
    extra_fields = set()
    for name, message in ours.items():
        if name not in theirs:
            continue
        known = {f["number"] for f in theirs[name]["fields"]}
        extra_fields |= {
            (name, f["name"], f["number"]) for f in message["fields"] if f["number"] not in known
        }
    # Reported in the failure message when something unexpected shows up.
    report = f"extra messages: {sorted(extra_messages)}\nextra fields: {sorted(extra_fields)}"
    assert extra_messages <= NEWER_UPSTREAM_MESSAGES, report
    assert extra_fields <= NEWER_UPSTREAM_FIELDS, report


def _round_trip_request(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    _helper("make-request", str(tmp_path))  # tritonclient builds and serializes
    _helper("read-request", str(tmp_path))  # our stubs parse the bytes
    theirs = json.loads((tmp_path / "request.triton.json").read_text())
    ours = json.loads((tmp_path / "request.ours.json").read_text())
    return theirs, ours


def test_tritonclient_request_parses_with_our_stubs(tmp_path: Path) -> None:
    theirs, ours = _round_trip_request(tmp_path)
    # Same values field by field (MessageToDict drops unknown fields, so nothing went unread) ...
    assert ours["dict"] == theirs["dict"]
    # ... and our re-serialization reproduces tritonclient's bytes exactly.
    assert ours["serialized_hex"] == theirs["serialized_hex"]

    assert (ours["model_name"], ours["model_version"], ours["id"]) == (
        "efficientnet_lite0",
        "1",
        "req-42",
    )
    # Every InferParameter kind, including Triton's uint64/double extensions.
    assert ours["parameters"] == {
        "priority": ["uint64_param", 3],
        "sequence_end": ["bool_param", False],
        "sequence_id": ["int64_param", 7],
        "sequence_start": ["bool_param", True],
        "tag": ["string_param", "unit"],
        "temperature": ["double_param", 0.25],
        "timeout": ["int64_param", 1500],
        "top_k": ["int64_param", 5],
        "verbose": ["bool_param", True],
    }
    assert [(t["name"], t["datatype"], t["shape"]) for t in ours["inputs"]] == [
        ("image", "UINT8", [2, 4, 4, 3]),
        ("scale", "FP32", [2, 1]),
        ("tags", "BYTES", [2]),
        ("mask", "BOOL", [2, 4, 4]),
    ]
    assert ours["inputs"][3]["parameters"] == {
        "shared_memory_byte_size": ["int64_param", 32],
        "shared_memory_offset": ["int64_param", 64],
        "shared_memory_region": ["string_param", "region0"],
    }
    assert ours["outputs"] == [
        {"name": "probs", "parameters": {"classification": ["int64_param", 3]}},
        {"name": "embedding", "parameters": {}},
    ]
    # raw_input_contents: one entry per non-shared-memory input, the tensor's exact bytes.
    raw = ours["raw_input_contents_hex"]
    assert raw[:2] == [theirs["expected_raw_hex"]["image"], theirs["expected_raw_hex"]["scale"]]
    tags = bytes.fromhex(raw[2])
    assert tags == b"\x03\x00\x00\x00cat\x04\x00\x00\x00d\xc3\xb6g"
    assert len(raw) == 3


def test_our_responses_parse_and_decode_in_tritonclient(tmp_path: Path) -> None:
    _helper("make-responses", str(tmp_path))  # our stubs build and serialize
    _helper("read-responses", str(tmp_path))  # tritonclient parses and decodes
    ours = json.loads((tmp_path / "responses.ours.json").read_text())
    theirs = json.loads((tmp_path / "responses.triton.json").read_text())

    assert set(theirs["parsed"]) == set(ours)
    for key, entry in ours.items():
        parsed = theirs["parsed"][key]
        assert parsed["dict"] == entry["dict"], key
        assert parsed["serialized_hex"] == parsed["original_hex"], key

    decoded = theirs["decoded"]
    probs = [0.5, 0.25, 0.125, 0.0625, 0.75, -1.5]
    labels = ["0.5:281:tabby", "0.25:285:Egyptian cat", "0.75:1:goldfish", "\u00e9:0:x"]
    for key in ("infer", "stream_ok"):
        tensors = decoded[key]["tensors"]
        assert tensors["probs"] == {"dtype": "float32", "shape": [2, 3], "values": probs}
        assert tensors["labels"] == {"dtype": "object", "shape": [2, 2], "values": labels}
    assert decoded["stream_typed"]["tensors"]["labels"]["values"] == labels
    assert decoded["stream_err"] == {
        "error_message": "model 'x' is not ready",
        "has_response": False,
    }
    assert decoded["infer_parameters"] == {
        "count": ["int64_param", -3],
        "note": ["string_param", "ok"],
        "score_scale": ["double_param", 0.5],
        "sequence_id": ["uint64_param", 2**63 + 5],
        "triton_final_response": ["bool_param", True],
    }
