"""imgclf.runtime.engine: real ONNX Runtime sessions over the tiny model (providers read back,
IO binding, float16 models, warm-up). Fakes only for what ONNX Runtime lists and whether the
CUDA driver is present."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from imgclf.errors import InvalidInput
from imgclf.runtime import engine as engine_mod
from imgclf.runtime import providers as providers_mod
from imgclf.runtime.engine import Engine, run_with_binding
from imgclf.runtime.options import ExecutionOptions
from imgclf.runtime.providers import CPU, CUDA, TENSORRT
from tests.tiny_model import LABELS, make_tiny_model

SIZE = 16
CPU_ONLY = ExecutionOptions(providers="cpu", intra_op_threads=1)
NO_GPU_HERE = pytest.mark.skipif(
    providers_mod.cuda_driver_present(), reason="this host has a CUDA driver"
)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("engine") / "model.onnx", size=SIZE)


@pytest.fixture(scope="module")
def engine(tiny_path: Path) -> Engine:
    return Engine(tiny_path, CPU_ONLY)


@pytest.fixture
def no_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests from loading the CUDA libraries of the nvidia-* packages."""
    monkeypatch.setattr(engine_mod, "preload_cuda_libraries", lambda: None)


def driver(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    monkeypatch.setattr(providers_mod, "cuda_driver_present", lambda: present)


def reference_logits(batch: np.ndarray) -> np.ndarray:
    """What the tiny model computes: global average pool, then 4 x the channel mean."""
    return 4.0 * batch.astype(np.float64).mean(axis=(2, 3))


def random_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


# --- Engine over a real ONNX Runtime session -------------------------------------------------


def test_engine_reports_cpu_and_io(engine):
    info = engine.info
    assert info.provider == CPU
    assert info.reason == "CPU requested"
    assert info.input_name == "input"
    assert info.output_name == "logits"
    assert info.input_shape == ("N", 3, SIZE, SIZE)
    assert info.output_shape == ("N", len(LABELS))
    assert info.input_type == "tensor(float)"
    assert info.io_binding is False
    assert set(engine.metadata_props) >= {"labels", "input_size", "resize_size", "mean", "std"}


@NO_GPU_HERE
@pytest.mark.parametrize("preference", ["cuda", "tensorrt"])
def test_required_gpu_refuses_on_this_host(tiny_path, preference):
    with pytest.raises(RuntimeError, match=f"{preference} execution required but unavailable: "):
        Engine(tiny_path, ExecutionOptions(providers=preference))


@NO_GPU_HERE
def test_auto_falls_back_to_cpu_and_says_why(tiny_path):
    eng = Engine(tiny_path, ExecutionOptions(intra_op_threads=1))
    assert eng.info.provider == CPU
    assert eng.info.reason.startswith("CPU fallback: ")
    assert "no CUDA" in eng.info.reason  # no provider in the build, or no driver
    assert eng.info.io_binding is False


@NO_GPU_HERE
def test_cuda_graphs_asked_for_but_running_on_cpu_are_off(tiny_path):
    eng = Engine(tiny_path, ExecutionOptions(intra_op_threads=1, cuda_graphs=True))
    assert eng.info.provider == CPU
    assert eng.info.cuda_graphs is False
    np.testing.assert_allclose(eng.run(random_batch(2)), reference_logits(random_batch(2)),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


@NO_GPU_HERE
def test_auto_reports_a_silent_fallback_of_onnxruntime(tiny_path, monkeypatch, no_preload, caplog):
    # The driver is said to be there, so CUDA is requested; ONNX Runtime cannot start it on
    # this host and quietly runs on CPU. The engine must notice and say so.
    driver(monkeypatch, True)
    with caplog.at_level(logging.WARNING, logger="imgclf.runtime.engine"):
        eng = Engine(tiny_path, ExecutionOptions(intra_op_threads=1))
    assert eng.info.provider == CPU
    assert eng.info.reason.startswith(f"CPU fallback: {CUDA} was requested but ONNX Runtime")
    assert "could not start it" in caplog.text
    np.testing.assert_allclose(eng.run(random_batch(2)), reference_logits(random_batch(2)), 1e-5)


@NO_GPU_HERE
@pytest.mark.parametrize(("preference", "first"), [("cuda", CUDA), ("tensorrt", TENSORRT)])
def test_required_gpu_refuses_a_silent_fallback(
    tiny_path, tmp_path, monkeypatch, no_preload, preference, first
):
    driver(monkeypatch, True)
    options = ExecutionOptions(providers=preference, tensorrt_cache_dir=tmp_path / "trt")
    with pytest.raises(
        RuntimeError,
        match=f"{preference} execution required but ONNX Runtime runs {CPU}: {first} was requested",
    ):
        Engine(tiny_path, options)


@pytest.mark.parametrize("n", [1, 5])
def test_run_batches(engine, n):
    batch = random_batch(n, seed=n)
    out = engine.run(batch)
    assert out.shape == (n, len(LABELS))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference_logits(batch), rtol=1e-5, atol=1e-5)


def test_run_accepts_a_non_contiguous_batch(engine):
    batch = random_batch(4)
    view = batch[::2]
    assert not view.flags.c_contiguous
    np.testing.assert_allclose(engine.run(view), reference_logits(view), rtol=1e-5, atol=1e-5)


def test_rows_are_independent(engine):
    batch = np.zeros((3, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(3):
        batch[i, i] = 1.0  # image i is pure channel i
    out = engine.run(batch)
    assert list(out.argmax(axis=1)) == [0, 1, 2]


def test_warmup(engine, monkeypatch):
    """Warm-up runs the real session once per batch size, on batches of that size."""
    ran: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    real_run = engine.run

    def run(batch: np.ndarray) -> np.ndarray:
        out = real_run(batch)
        ran.append((batch.shape, out.shape))
        return out

    monkeypatch.setattr(engine, "run", run)
    engine.warmup([1, 4], (3, SIZE, SIZE))
    assert ran == [((1, 3, SIZE, SIZE), (1, 3)), ((4, 3, SIZE, SIZE), (4, 3))]


def test_check_sample_shape_accepts_model_shape(engine):
    engine.check_sample_shape((3, SIZE, SIZE))


@pytest.mark.parametrize(
    "shape",
    [(3, SIZE, SIZE - 1), (1, 3, SIZE, SIZE), (SIZE, SIZE, 3), (3, SIZE), (1, SIZE, SIZE), ()],
)
def test_check_sample_shape_rejects(engine, shape):
    with pytest.raises(InvalidInput, match=r"does not match the model input \[3, 16, 16\]"):
        engine.check_sample_shape(shape)


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_other_input_types_rejected(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input"], ["output"], to=TensorProto.FLOAT)],
        "int32",
        [helper.make_tensor_value_info("input", TensorProto.INT32, ["N", 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
    )
    with pytest.raises(ValueError, match=r"float32, float16 or uint8, found tensor\(int32\)"):
        Engine(save(graph, tmp_path / "int32.onnx"), CPU_ONLY)


# --- IO binding -----------------------------------------------------------------------------


def test_run_with_binding_equals_plain_run(engine):
    session = engine._session
    batch = random_batch(3, seed=7)
    (plain,) = session.run(["logits"], {"input": batch})
    bound = run_with_binding(session, "input", "logits", batch, "cpu", 0)
    assert isinstance(bound, np.ndarray)
    assert bound.dtype == np.float32
    np.testing.assert_array_equal(bound, plain)


def test_engine_run_through_binding_is_thread_safe(tiny_path):
    # No CUDA session here: force the binding path of `run` on a CPU session.
    eng = Engine(tiny_path, CPU_ONLY)
    eng._bind = True
    batches = [random_batch(1 + i % 4, seed=i) for i in range(24)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(eng.run, batches))
    for batch, out in zip(batches, outs, strict=True):
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, reference_logits(batch), rtol=1e-5, atol=1e-5)


def test_engine_runs_through_prepared_buckets(tiny_path):
    # On a GPU the buckets live in device memory; here the same path runs in CPU memory.
    eng = Engine(tiny_path, CPU_ONLY)
    assert eng.buckets == []
    eng.prepare_buckets([1, 2, 4], (3, SIZE, SIZE))
    assert eng.buckets == [1, 2, 4]
    for n in (4, 3, 1, 2, 5):  # 5: beyond the largest bucket, a plain run
        batch = random_batch(n, seed=n)
        out = eng.run(batch)
        assert out.shape == (n, len(LABELS))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, reference_logits(batch), rtol=1e-5, atol=1e-5)


# --- float16 models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp16_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a float16 input and output (float32 inside)."""
    weight = np.zeros((3, 3), dtype=np.float32)
    np.fill_diagonal(weight, 4.0)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits32"]),
            helper.make_node("Cast", ["logits32"], ["logits"], to=TensorProto.FLOAT16),
        ],
        "tiny16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["N", 3])],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.zeros(3, dtype=np.float32), "B"),
        ],
    )
    return save(graph, tmp_path_factory.mktemp("fp16") / "model.onnx")


@pytest.mark.parametrize("bind", [False, True])
def test_float16_model_takes_and_returns_float32(fp16_path, bind):
    eng = Engine(fp16_path, CPU_ONLY)
    eng._bind = bind
    assert eng.info.input_type == "tensor(float16)"
    batch = random_batch(3, seed=3)
    out = eng.run(batch)
    assert out.dtype == np.float32
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out, reference_logits(batch), rtol=2e-3, atol=2e-3)
    eng.warmup([1, 2], (3, SIZE, SIZE))
