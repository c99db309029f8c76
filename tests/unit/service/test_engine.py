"""service.engine: provider choice, and a real ONNX Runtime session over the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service import engine as engine_mod
from service.engine import CPU, CUDA, Engine, choose_providers, softmax
from service.errors import InvalidInput
from tests.tiny_model import LABELS, make_tiny_model

SIZE = 16


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("engine") / "model.onnx", size=SIZE)


@pytest.fixture(scope="module")
def engine(tiny_path: Path) -> Engine:
    return Engine(tiny_path, providers="cpu", intra_op_threads=1)


def driver(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    monkeypatch.setattr(engine_mod, "cuda_driver_present", lambda: present)


def reference_logits(batch: np.ndarray) -> np.ndarray:
    """What the tiny model computes: global average pool, then 4 x the channel mean."""
    return 4.0 * batch.astype(np.float64).mean(axis=(2, 3))


# --- choose_providers -----------------------------------------------------------------------


def test_cpu_only_build(monkeypatch):
    driver(monkeypatch, True)
    providers, reason = choose_providers("auto", available=[CPU])
    assert providers == [CPU]
    assert "no CUDA provider" in reason


def test_cuda_listed_but_no_driver_falls_back(monkeypatch):
    driver(monkeypatch, False)
    providers, reason = choose_providers("auto", available=[CUDA, CPU])
    assert providers == [CPU]
    assert reason.startswith("CPU fallback")
    assert "no CUDA driver" in reason


@pytest.mark.parametrize("preference", ["auto", "cuda"])
def test_cuda_chosen_with_driver(monkeypatch, preference):
    driver(monkeypatch, True)
    providers, reason = choose_providers(preference, gpu_id=2, available=[CUDA, CPU])
    assert providers == [(CUDA, {"device_id": "2"}), CPU]
    assert "device 2" in reason


def test_cpu_preference_ignores_cuda(monkeypatch):
    driver(monkeypatch, True)
    providers, reason = choose_providers("cpu", available=[CUDA, CPU])
    assert providers == [CPU]
    assert reason == "CPU requested"


@pytest.mark.parametrize(
    ("available", "present", "why"),
    [([CPU], True, "no CUDA provider"), ([CUDA, CPU], False, "no CUDA driver")],
)
def test_cuda_preference_without_cuda_raises(monkeypatch, available, present, why):
    driver(monkeypatch, present)
    with pytest.raises(RuntimeError, match=f"CUDA execution required but unavailable: .*{why}"):
        choose_providers("cuda", available=available)


def test_available_defaults_to_onnxruntime(monkeypatch):
    driver(monkeypatch, False)
    monkeypatch.setattr(engine_mod.ort, "get_available_providers", lambda: [CPU])
    assert choose_providers("auto") == (
        [CPU],
        "CPU fallback: this ONNX Runtime build has no CUDA provider",
    )


# --- Engine over a real ONNX Runtime session -------------------------------------------------


def test_engine_reports_cpu_and_io(engine):
    info = engine.info
    assert info.provider == CPU
    assert info.reason == "CPU requested"
    assert info.input_name == "input"
    assert info.output_name == "logits"
    assert info.input_shape == ("N", 3, SIZE, SIZE)
    assert set(engine.metadata_props) >= {"labels", "input_size", "resize_size", "mean", "std"}


def test_auto_without_driver_runs_on_cpu(tiny_path, monkeypatch):
    driver(monkeypatch, False)
    eng = Engine(tiny_path, providers="auto", intra_op_threads=1)
    assert eng.info.provider == CPU
    assert eng.info.reason.startswith("CPU fallback")


@pytest.mark.parametrize("n", [1, 5])
def test_run_batches(engine, n):
    batch = np.random.default_rng(n).random((n, 3, SIZE, SIZE), dtype=np.float32)
    out = engine.run(batch)
    assert out.shape == (n, len(LABELS))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference_logits(batch), rtol=1e-5, atol=1e-5)


def test_rows_are_independent(engine):
    batch = np.zeros((3, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(3):
        batch[i, i] = 1.0  # image i is pure channel i
    out = engine.run(batch)
    assert list(out.argmax(axis=1)) == [0, 1, 2]


def test_warmup(engine):
    engine.warmup([1, 4], (3, SIZE, SIZE))


def test_check_sample_shape_accepts_model_shape(engine):
    engine.check_sample_shape((3, SIZE, SIZE))


@pytest.mark.parametrize(
    "shape",
    [(3, SIZE, SIZE - 1), (1, 3, SIZE, SIZE), (SIZE, SIZE, 3), (3, SIZE), (1, SIZE, SIZE), ()],
)
def test_check_sample_shape_rejects(engine, shape):
    with pytest.raises(InvalidInput, match=r"does not match the model input \[3, 16, 16\]"):
        engine.check_sample_shape(shape)


def test_non_float_input_rejected(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input"], ["output"], to=TensorProto.FLOAT)],
        "uint8",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "uint8.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="input must be float32"):
        Engine(path, providers="cpu", intra_op_threads=1)


# --- softmax --------------------------------------------------------------------------------


def test_softmax_rows_sum_to_one():
    logits = np.random.default_rng(0).normal(0, 3, (7, 10)).astype(np.float32)
    probs = softmax(logits)
    assert probs.dtype == np.float32
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    exp = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(probs, exp / exp.sum(axis=1, keepdims=True), atol=1e-6)
    assert (probs.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_softmax_stable_for_large_logits():
    logits = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]], dtype=np.float32)
    probs = softmax(logits)
    assert np.isfinite(probs).all()
    small = softmax(np.array([[0.0, 1.0, 2.0], [0.0, -1.0, -2.0]], dtype=np.float32))
    np.testing.assert_allclose(probs, small, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_softmax_of_float64_is_float32():
    probs = softmax(np.array([[1.0, 2.0]], dtype=np.float64))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], [1 / (1 + np.e), np.e / (1 + np.e)], atol=1e-6)
