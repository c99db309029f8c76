"""imgclf.runtime.engine: execution options, provider choice, and real ONNX Runtime sessions over the
tiny model. Fakes only for what ONNX Runtime lists and whether the CUDA driver is present."""

from __future__ import annotations

import itertools
import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from imgclf.errors import InvalidInput
from imgclf.runtime import engine as engine_mod
from imgclf.runtime.engine import (
    CPU,
    CUDA,
    TENSORRT,
    Engine,
    ExecutionOptions,
    choose_providers,
    model_cache_key,
    run_with_binding,
    session_options,
    softmax,
)
from tests.tiny_model import LABELS, make_tiny_model

SIZE = 16
CPU_ONLY = ExecutionOptions(providers="cpu", intra_op_threads=1)
NO_GPU_HERE = pytest.mark.skipif(
    engine_mod.cuda_driver_present(), reason="this host has a CUDA driver"
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
    monkeypatch.setattr(engine_mod, "cuda_driver_present", lambda: present)


def reference_logits(batch: np.ndarray) -> np.ndarray:
    """What the tiny model computes: global average pool, then 4 x the channel mean."""
    return 4.0 * batch.astype(np.float64).mean(axis=(2, 3))


def random_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def names(providers: list) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


# --- ExecutionOptions -----------------------------------------------------------------------


def test_defaults_are_safe_for_a_shared_cpu():
    options = ExecutionOptions()
    assert options.providers == "auto"
    assert options.allow_spinning is False
    assert options.inter_op_threads == 1
    assert options.cudnn_conv_algo_search == "HEURISTIC"
    assert options.gpu_mem_limit_bytes == 0
    assert options.io_binding is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("providers", "gpu", "providers must be one of auto, cpu, cuda, tensorrt"),
        ("gpu_id", -1, "gpu_id must be >= 0"),
        ("intra_op_threads", -2, "intra_op_threads must be >= 0"),
        ("inter_op_threads", -1, "inter_op_threads must be >= 0"),
        ("cudnn_conv_algo_search", "heuristic", "cudnn_conv_algo_search must be one of"),
        ("gpu_mem_limit_bytes", -1, "gpu_mem_limit_bytes must be >= 0"),
        ("arena_extend_strategy", "grow", "arena_extend_strategy must be one of"),
    ],
)
def test_invalid_options_rejected(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ExecutionOptions(**{field: value})


def test_cache_dir_given_as_text_becomes_a_path():
    assert ExecutionOptions(tensorrt_cache_dir="/var/cache/trt").tensorrt_cache_dir == Path(
        "/var/cache/trt"
    )


# --- choose_providers: every preference x what is there -------------------------------------

MATRIX = list(itertools.product(["auto", "cpu", "cuda", "tensorrt"], *[[False, True]] * 3))


@pytest.mark.parametrize(("preference", "cuda_listed", "driver_ok", "trt_listed"), MATRIX)
def test_provider_choice_matrix(tiny_path, preference, cuda_listed, driver_ok, trt_listed):
    available = [p for p, on in [(TENSORRT, trt_listed), (CUDA, cuda_listed)] if on] + [CPU]
    options = ExecutionOptions(providers=preference, gpu_id=1)
    cuda_works = cuda_listed and driver_ok
    if preference == "cpu":
        expected: list[str] | None = [CPU]
    elif preference == "auto":
        expected = [CUDA, CPU] if cuda_works else [CPU]
    elif preference == "cuda":
        expected = [CUDA, CPU] if cuda_works else None
    else:
        expected = [TENSORRT, CUDA, CPU] if cuda_works and trt_listed else None

    def choose():
        return choose_providers(options, available, driver_ok, model_path=tiny_path)

    if expected is None:
        with pytest.raises(RuntimeError, match=f"^{preference} execution required but unavailable"):
            choose()
        return
    providers, reason = choose()
    assert names(providers) == expected
    if expected[0] == CPU:
        assert providers == [CPU]  # no GPU option dicts on a CPU list
        if preference == "cpu":
            assert reason == "CPU requested"
        else:
            assert reason.startswith("CPU fallback: ")
    else:
        assert "device 1" in reason


@pytest.mark.parametrize(
    ("available", "driver_ok", "preference", "cause"),
    [
        ([CPU], True, "auto", "this ONNX Runtime build has no CUDA provider"),
        ([CUDA, CPU], False, "auto", "CUDA provider installed but no CUDA driver (libcuda)"),
        ([CPU], True, "cuda", "this ONNX Runtime build has no CUDA provider"),
        ([CUDA, CPU], False, "cuda", "CUDA provider installed but no CUDA driver (libcuda)"),
        ([CUDA, CPU], True, "tensorrt", "this ONNX Runtime build has no TensorRT provider"),
        ([TENSORRT, CUDA, CPU], False, "tensorrt", "no CUDA driver (libcuda)"),
    ],
)
def test_reason_names_the_cause(available, driver_ok, preference, cause):
    options = ExecutionOptions(providers=preference)
    if preference == "auto":
        providers, reason = choose_providers(options, available, driver_ok)
        assert providers == [CPU]
        assert reason.startswith("CPU fallback: ") and cause in reason
    else:
        with pytest.raises(RuntimeError, match=re.escape(cause)):
            choose_providers(options, available, driver_ok)


def test_auto_never_picks_tensorrt():
    providers, _ = choose_providers(ExecutionOptions(), [TENSORRT, CUDA, CPU], True)
    assert names(providers) == [CUDA, CPU]


def test_defaults_ask_onnxruntime_and_the_driver(monkeypatch):
    driver(monkeypatch, False)
    monkeypatch.setattr(engine_mod.ort, "get_available_providers", lambda: [CUDA, CPU])
    assert choose_providers(ExecutionOptions()) == (
        [CPU],
        "CPU fallback: CUDA provider installed but no CUDA driver (libcuda) on this host",
    )
    driver(monkeypatch, True)
    assert names(choose_providers(ExecutionOptions())[0]) == [CUDA, CPU]


def test_cuda_option_dict():
    providers, reason = choose_providers(ExecutionOptions(gpu_id=2), [CUDA, CPU], True)
    assert providers == [
        (
            CUDA,
            {
                "device_id": "2",
                "cudnn_conv_algo_search": "HEURISTIC",
                "arena_extend_strategy": "kNextPowerOfTwo",
                "do_copy_in_default_stream": "1",
            },
        ),
        CPU,
    ]
    assert reason == "CUDA available (device 2)"


def test_cuda_option_dict_with_memory_limit_and_tuning():
    options = ExecutionOptions(
        gpu_mem_limit_bytes=2 << 30,
        cudnn_conv_algo_search="EXHAUSTIVE",
        arena_extend_strategy="kSameAsRequested",
    )
    (_, opts), _ = choose_providers(options, [CUDA, CPU], True)[0]
    assert opts["gpu_mem_limit"] == str(2 << 30)
    assert opts["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert opts["arena_extend_strategy"] == "kSameAsRequested"


@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_option_dict(tiny_path, tmp_path, fp16):
    options = ExecutionOptions(
        providers="tensorrt", gpu_id=1, tensorrt_fp16=fp16, tensorrt_cache_dir=tmp_path
    )
    providers, reason = choose_providers(options, [TENSORRT, CUDA, CPU], True, model_path=tiny_path)
    (trt, trt_opts), (cuda, cuda_opts), cpu = providers
    assert (trt, cuda, cpu) == (TENSORRT, CUDA, CPU)
    assert reason == "TensorRT available (device 1)"
    assert cuda_opts["device_id"] == trt_opts["device_id"] == "1"
    cache = Path(trt_opts.pop("trt_engine_cache_path"))
    assert trt_opts == {
        "device_id": "1",
        "trt_fp16_enable": str(fp16),
        "trt_engine_cache_enable": "True",
        "trt_timing_cache_enable": "True",
    }
    assert cache.parent == tmp_path
    assert cache.name == model_cache_key(tiny_path, options)
    assert engine_mod.file_sha256(tiny_path)[:16] in cache.name


def test_cuda_graphs_are_asked_of_the_cuda_provider_only_with_io_binding():
    def cuda_opts(**kw) -> dict[str, str]:
        providers, _ = choose_providers(ExecutionOptions(**kw), [TENSORRT, CUDA, CPU], True)
        return dict(next(p for p in providers if isinstance(p, tuple) and p[0] == CUDA)[1])

    assert cuda_opts(cuda_graphs=True)["enable_cuda_graph"] == "1"
    assert "enable_cuda_graph" not in cuda_opts()
    assert "enable_cuda_graph" not in cuda_opts(cuda_graphs=True, io_binding=False)
    # TensorRT first: its CUDA fallback would capture a partial graph
    assert "enable_cuda_graph" not in cuda_opts(cuda_graphs=True, providers="tensorrt")


def test_tensorrt_without_cache_dir_caches_nothing(tiny_path):
    options = ExecutionOptions(providers="tensorrt")
    (_, trt_opts), *_ = choose_providers(options, [TENSORRT, CUDA, CPU], True)[0]
    assert trt_opts == {
        "device_id": "0",
        "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "False",
    }


def test_tensorrt_cache_needs_the_model(tmp_path):
    options = ExecutionOptions(providers="tensorrt", tensorrt_cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs the model path"):
        choose_providers(options, [TENSORRT, CUDA, CPU], True)


# --- the engine cache key -------------------------------------------------------------------


def test_cache_key_names_model_runtime_and_precision(tiny_path, monkeypatch):
    monkeypatch.setattr(engine_mod, "tensorrt_version", lambda: None)
    key = model_cache_key(tiny_path, ExecutionOptions())
    digest = engine_mod.file_sha256(tiny_path)[:16]
    assert key == f"{digest}-ort{ort.__version__}-trt-fp32"
    monkeypatch.setattr(engine_mod, "tensorrt_version", lambda: "10.9.0")
    key16 = model_cache_key(tiny_path, ExecutionOptions(tensorrt_fp16=True))
    assert key16 == f"{digest}-ort{ort.__version__}-trt10.9.0-fp16"


def test_cache_key_follows_the_bytes_not_the_path(tiny_path, tmp_path):
    options = ExecutionOptions()
    copy = tmp_path / "elsewhere.onnx"
    shutil.copyfile(tiny_path, copy)
    assert model_cache_key(copy, options) == model_cache_key(tiny_path, options)
    changed = make_tiny_model(tmp_path / "changed.onnx", size=SIZE, labels=["a", "b"])
    assert model_cache_key(changed, options) != model_cache_key(tiny_path, options)
    copy.write_bytes(tiny_path.read_bytes() + b"\0")
    assert model_cache_key(copy, options) != model_cache_key(tiny_path, options)


def test_tensorrt_version_from_the_installed_wheel(monkeypatch):
    def version(dist: str) -> str:
        if dist == "tensorrt-cu12":
            return "10.9.0.34"
        raise engine_mod.importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(engine_mod.importlib.metadata, "version", version)
    assert engine_mod.tensorrt_version.__wrapped__() == "10.9.0.34"


def test_runtime_version_changes_the_key(tiny_path, monkeypatch):
    before = model_cache_key(tiny_path, ExecutionOptions())
    monkeypatch.setattr(engine_mod.ort, "__version__", "99.0.0")
    assert model_cache_key(tiny_path, ExecutionOptions()) != before


# --- session options ------------------------------------------------------------------------


def test_session_options_turn_spinning_off_by_default():
    so = session_options(ExecutionOptions(intra_op_threads=3, inter_op_threads=2))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 3
    assert so.inter_op_num_threads == 2
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.log_severity_level == 3


def test_session_options_allow_spinning():
    so = session_options(ExecutionOptions(allow_spinning=True))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "1"


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


# --- CUDA library preloading ----------------------------------------------------------------


def test_preload_output_goes_to_the_debug_log(monkeypatch, caplog, capsys):
    monkeypatch.setattr(engine_mod.ort, "preload_dlls", lambda: print("loaded libcudart"))
    with caplog.at_level(logging.DEBUG, logger="imgclf.runtime.engine"):
        engine_mod.preload_cuda_libraries.__wrapped__()
    assert capsys.readouterr().out == ""
    assert "loaded libcudart" in caplog.text


def test_preload_failure_is_only_a_warning(monkeypatch, caplog):
    def fail():
        raise RuntimeError("no nvidia packages")

    monkeypatch.setattr(engine_mod.ort, "preload_dlls", fail)
    with caplog.at_level(logging.WARNING, logger="imgclf.runtime.engine"):
        engine_mod.preload_cuda_libraries.__wrapped__()
    assert "preloading the CUDA libraries failed: no nvidia packages" in caplog.text


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
