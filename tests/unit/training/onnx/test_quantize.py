"""imgclf.training.onnx.quantize: the INT8 recipe and its accuracy gate, on the bundled digits
model and
the real digits data (calibration from the training split, the gate on the validation split,
both through imgclf.imaging as the server preprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from imgclf.imaging import preprocess_image
from imgclf.modelmeta import ModelMetadata
from imgclf.training.data.datasets import load_image, load_split
from imgclf.training.data.folders import stratified_sample
from imgclf.training.onnx.accuracy_gate import accuracy_gate
from imgclf.training.onnx.quantize import (
    Calibration,
    preprocess_for_quantization,
    quantize_gated,
    quantize_int8,
    run_probabilities,
)

DIGITS = Path(__file__).parents[4] / "models" / "digits" / "1" / "model.onnx"


@pytest.fixture(scope="module")
def digits_data() -> dict:
    meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(DIGITS)).metadata_props})
    split = load_split("digits", None, 0.2, 0)
    spec = meta.preprocessing
    cal = stratified_sample(split.train_labels, 200, 0)
    return {
        "calibration": np.stack(
            [preprocess_image(load_image(split.train_samples[i]), spec) for i in cal]
        ),
        "val": np.stack([preprocess_image(load_image(s), spec) for s in split.val_samples]),
        "labels": split.val_labels,
        "classes": split.class_names,
    }


def gated(data: dict, out: Path, calibration: np.ndarray, *cals: Calibration):
    return quantize_gated(
        DIGITS, out, calibration, data["val"], data["labels"], data["classes"], list(cals),
        {"images": len(calibration), "seed": 0}, "validation split",
    )  # fmt: skip


def test_a_good_calibration_passes_and_records_itself(digits_data, tmp_path):
    out = tmp_path / "model.int8.onnx"
    result = gated(digits_data, out, digits_data["calibration"], Calibration("minmax"))
    assert result.path == out and result.gate.ok, result.gate
    assert result.gate.int8_accuracy >= result.gate.float_accuracy - 1.0
    proto = onnx.load(str(out))
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["precision"] == "int8"
    assert props["calibration"] == {"method": "minmax", "images": 200, "seed": 0}
    assert props["accuracy_gate"]["passed"] is True
    assert props["accuracy_gate"]["int8_accuracy"] == pytest.approx(result.gate.int8_accuracy)
    assert props["labels"] == digits_data["classes"]  # the float model's metadata carried over
    assert props["class_activation_maps"].startswith("none: head is not global pooling")
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    scales = [
        onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("_scale")
    ]
    assert any(s.ndim == 1 and s.size > 1 for s in scales)  # per-channel weights


@pytest.mark.parametrize(
    "broken",
    ["constant images", "percentile 50"],
)
def test_a_broken_calibration_is_refused_and_nothing_written(digits_data, tmp_path, broken):
    out = tmp_path / "model.int8.onnx"
    if broken == "constant images":
        calibration = np.zeros_like(digits_data["calibration"][:32])
        cal = Calibration("minmax")
    else:
        calibration, cal = digits_data["calibration"], Calibration("percentile", percentile=50.0)
    result = gated(digits_data, out, calibration, cal)
    assert result.path is None and not result.gate.ok
    assert not out.exists() and not list(tmp_path.iterdir())
    assert result.gate.agreement < 98.0
    worst = result.worst
    assert worst and any(w["node"] for w in worst)  # names to keep in float on a retry
    assert all(np.isfinite(w["sqnr_lost_db"]) for w in worst)
    assert [w["sqnr_lost_db"] for w in worst] == sorted(
        (w["sqnr_lost_db"] for w in worst), reverse=True
    )
    assert worst[0]["sqnr_lost_db"] > 3.0  # a broken calibration loses signal somewhere
    sqnrs = [s["output_sqnr_db"] for s in result.sensitive]  # layers ranked by their weights
    assert sqnrs and sqnrs == sorted(sqnrs) and all(s["node"] for s in result.sensitive)


def test_a_retry_with_another_method_is_written(digits_data, tmp_path):
    out = tmp_path / "model.int8.onnx"
    bad = Calibration("percentile", percentile=50.0)
    result = gated(digits_data, out, digits_data["calibration"], bad, Calibration("entropy"))
    assert [r.ok for _, r in result.attempts] == [False, True]
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert props["calibration"]["method"] == "entropy"


def test_the_bundled_digits_int8_variant_passes_the_gate_measured_again(digits_data):
    """models/digits/1/model.int8.onnx (make models): its recorded gate, and the same gate
    measured here on the held-out split."""
    int8 = DIGITS.parent / "model.int8.onnx"
    props = {p.key: json.loads(p.value) for p in onnx.load(str(int8)).metadata_props}
    assert props["precision"] == "int8" and props["accuracy_gate"]["passed"]
    assert props["calibration"]["images"] == 300
    fp32 = run_probabilities(DIGITS, digits_data["val"])
    got = run_probabilities(int8, digits_data["val"])
    report = accuracy_gate(fp32, got, digits_data["labels"], digits_data["classes"])
    assert report.ok, report
    assert report.int8_accuracy == pytest.approx(props["accuracy_gate"]["int8_accuracy"])


def ones_convolution(folder: Path, channels: int = 64) -> Path:
    """A 1x1 convolution of `channels` input channels by weights of ones."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, channels, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])], "ones",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", channels, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4, 4, 4])],
        [weights],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "float.onnx"))
    return preprocess_for_quantization(folder / "float.onnx", folder / "prepared.onnx")


def test_the_gate_runs_int8_products_that_overflow_16_bits_exactly(tmp_path):
    """A 1x1 convolution of 64 channels of ones by weights of ones: INT8 activations 255,
    weights 127. ORT's default U8S8 kernels on an x86 CPU without VNNI add such products in
    pairs with 16-bit saturation (255 * 127 * 2 > 32767) and return about 32 instead of 64;
    the gate (and the server) must run the exact arithmetic a CPU with VNNI runs."""
    ones = np.ones((2, 64, 4, 4), np.float32)
    prepared = ones_convolution(tmp_path)
    int8 = quantize_int8(prepared, ones, Calibration("minmax"), tmp_path / "int8.onnx")
    got = run_probabilities(int8, ones, output="logits-raw").reshape(-1)
    assert got == pytest.approx(np.full_like(got, 64), rel=0.02)


def test_7_bit_weights_are_exact_in_onnxruntimes_default_kernels(tmp_path):
    """The same convolution with 7-bit weights (64): 255 * 64 * 2 fits 16 bits, so ONNX
    Runtime's default kernels (the fast ones, no exact-products option) compute it exactly on
    any CPU, and give what the exact kernels give. (On a CPU with VNNI or on ARM the default
    kernels are exact anyway; the case this guards is x86 without VNNI, such as CI's.)"""
    import onnxruntime as ort
    from onnx import numpy_helper

    ones = np.ones((2, 64, 4, 4), np.float32)
    prepared = ones_convolution(tmp_path)
    int8 = quantize_int8(prepared, ones, Calibration("minmax", weight_bits=7), tmp_path / "q.onnx")
    weights = [
        numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer
        if numpy_helper.to_array(i).dtype == np.int8
    ]  # fmt: skip
    assert weights and max(int(np.abs(w).max()) for w in weights) == 64
    default = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    fast = default.run(None, {"input": ones})[0].reshape(-1)
    exact = run_probabilities(int8, ones, output="logits-raw").reshape(-1)
    assert fast == pytest.approx(np.full_like(fast, 64), rel=0.02)
    assert np.array_equal(fast, exact)
    with pytest.raises(ValueError, match="weight bits"):
        Calibration(weight_bits=6)
