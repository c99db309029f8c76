"""imgclf.training.onnx.keepfloat: a node left in float (``--keep-float``) still runs with float
weights in ONNX Runtime, whose WeightBiasQuantization transformer otherwise gives a Conv fed
by a per-tensor DequantizeLinear per-tensor INT8 weights when it loads the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from imgclf.training.onnx.quantize import (
    Calibration,
    preprocess_for_quantization,
    quantize_int8,
    run_probabilities,
)

KEPT = "kept"


def model_with_a_kept_conv(path: Path) -> Path:
    """input -> Conv KEPT -> Conv (identity) -> logits, and input -> Conv -> side (so the
    input is quantised). KEPT's first output channel has weights +-100 (summing to zero on
    inputs whose channels are equal), its second 0.1-0.4: per-tensor INT8 weights (scale
    100/127) round the second to 0 or 0.79, per-channel or float weights keep it."""
    kept = np.array([[100, -100, 100, -100], [0.3, 0.2, 0.1, 0.4]], np.float32)
    inits = {
        "w_side": np.ones((1, 4, 1, 1), np.float32),
        "w_kept": kept.reshape(2, 4, 1, 1),
        "b_kept": np.zeros(2, np.float32),
        "w_last": np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w_side"], ["side"], name="side"),
            helper.make_node("Conv", ["input", "w_kept", "b_kept"], ["hidden"], name=KEPT),
            helper.make_node("Conv", ["hidden", "w_last"], ["logits"], name="last"),
        ],
        "kept_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4, 4, 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2, 4, 4]),
            helper.make_tensor_value_info("side", TensorProto.FLOAT, ["n", 1, 4, 4]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_conv_kept_in_float_runs_with_its_float_weights(tmp_path):
    float_model = model_with_a_kept_conv(tmp_path / "float.onnx")
    prepared = preprocess_for_quantization(float_model, tmp_path / "prepared.onnx")
    x = np.random.default_rng(1).uniform(0.0, 1.0, (8, 1, 4, 4)).astype(np.float32)
    x = np.repeat(x, 4, axis=1)
    cal = Calibration("minmax", keep_float=(KEPT,))
    int8 = quantize_int8(prepared, x, cal, tmp_path / "int8.onnx")
    kept = next(n for n in onnx.load(str(int8)).graph.node if n.name == KEPT)
    assert kept.input[1] == "w_kept"  # the quantiser left it in float...
    want = run_probabilities(prepared, x, output="raw")[:, 1]
    got = run_probabilities(int8, x, output="raw")[:, 1]
    assert got == pytest.approx(want, rel=0.02, abs=0.01)  # ...and so does ONNX Runtime
