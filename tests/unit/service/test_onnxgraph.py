"""imgclf.onnxgraph: the few ModelProto fields the server reads, without the onnx package."""

from __future__ import annotations

from pathlib import Path

import onnx

from imgclf.onnxgraph import metadata_props, parse

DIGITS = Path(__file__).parents[3] / "models" / "digits" / "1"


def test_metadata_props_are_what_onnx_reads() -> None:
    for name in ("model.onnx", "model.int8.onnx"):
        path = DIGITS / name
        expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert metadata_props(path) == expected and "labels" in expected


def test_a_parse_writes_the_model_back_unchanged() -> None:
    data = (DIGITS / "model.int8.onnx").read_bytes()
    model = parse(data)
    assert model.metadata_props and model.graph.node
    assert onnx.load_from_string(model.SerializeToString()) == onnx.load_from_string(data)
