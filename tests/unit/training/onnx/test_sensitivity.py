"""imgclf.training.onnx.sensitivity: each layer's INT8 weights alone, ranked by what they cost
the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from imgclf.training.onnx.sensitivity import round_to_int8, weight_sensitivity


def two_convs(path: Path) -> Path:
    """`fragile` is a high-pass kernel (taps 100.3, -100, 100, -100) on inputs whose channels
    are equal: its output is 0.3 x the input, and INT8 rounding (steps of 0.79) makes the taps
    sum to 0. `exact` (+-1 per channel) rounds exactly."""
    fragile = np.array([100.3, -100.0, 100.0, -100.0], np.float32).reshape(1, 4, 1, 1)
    exact = np.array([1, -1, 1, -1], np.float32).reshape(4, 1, 1, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w_fragile"], ["hidden"], name="fragile"),
            helper.make_node("Conv", ["hidden", "w_exact"], ["logits"], name="exact"),
        ],
        "two_convs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4, 2, 2])],
        [
            numpy_helper.from_array(exact, "w_exact"),
            numpy_helper.from_array(fragile, "w_fragile"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_layer_whose_rounding_costs_the_output_most_comes_first(tmp_path):
    x = np.repeat(np.random.default_rng(0).uniform(0, 1, (8, 1, 2, 2)), 4, axis=1)
    x = x.astype(np.float32)
    rows = weight_sensitivity(two_convs(tmp_path / "m.onnx"), x)
    assert [r["node"] for r in rows] == ["fragile", "exact"]
    assert rows[0]["output_sqnr_db"] < 10.0  # the output rounds to about 0
    assert rows[1]["output_sqnr_db"] > 100.0  # +-1 rounds exactly


def test_round_to_int8_is_per_channel_on_the_axis_given():
    w = np.array([[100.0, 0.5], [0.01, 0.003]], np.float32)
    np.testing.assert_allclose(round_to_int8(w, 0)[1], [0.01, 0.00299213], rtol=1e-4)
    assert round_to_int8(w, 1)[1, 0] == 0.0  # per column: 0.01 is nothing beside 100
