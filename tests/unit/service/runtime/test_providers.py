"""imgclf.runtime.providers: the provider choice for every preference x what is there, the
provider option dicts, the TensorRT engine cache key, the CUDA library preloading. Fakes only
for what ONNX Runtime lists and whether the CUDA driver is present."""

from __future__ import annotations

import itertools
import logging
import re
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from imgclf.runtime import providers as providers_mod
from imgclf.runtime.options import ExecutionOptions
from imgclf.runtime.providers import CPU, CUDA, TENSORRT, choose_providers, model_cache_key
from tests.tiny_model import make_tiny_model

SIZE = 16


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("engine") / "model.onnx", size=SIZE)


def driver(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    monkeypatch.setattr(providers_mod, "cuda_driver_present", lambda: present)


def names(providers: list) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


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
    monkeypatch.setattr(providers_mod.ort, "get_available_providers", lambda: [CUDA, CPU])
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
    assert providers_mod.file_sha256(tiny_path)[:16] in cache.name


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
    monkeypatch.setattr(providers_mod, "tensorrt_version", lambda: None)
    key = model_cache_key(tiny_path, ExecutionOptions())
    digest = providers_mod.file_sha256(tiny_path)[:16]
    assert key == f"{digest}-ort{ort.__version__}-trt-fp32"
    monkeypatch.setattr(providers_mod, "tensorrt_version", lambda: "10.9.0")
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
        raise providers_mod.importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(providers_mod.importlib.metadata, "version", version)
    assert providers_mod.tensorrt_version.__wrapped__() == "10.9.0.34"


def test_runtime_version_changes_the_key(tiny_path, monkeypatch):
    before = model_cache_key(tiny_path, ExecutionOptions())
    monkeypatch.setattr(providers_mod.ort, "__version__", "99.0.0")
    assert model_cache_key(tiny_path, ExecutionOptions()) != before


# --- CUDA library preloading ----------------------------------------------------------------


def test_preload_output_goes_to_the_debug_log(monkeypatch, caplog, capsys):
    monkeypatch.setattr(providers_mod.ort, "preload_dlls", lambda: print("loaded libcudart"))
    with caplog.at_level(logging.DEBUG, logger="imgclf.runtime.providers"):
        providers_mod.preload_cuda_libraries.__wrapped__()
    assert capsys.readouterr().out == ""
    assert "loaded libcudart" in caplog.text


def test_preload_failure_is_only_a_warning(monkeypatch, caplog):
    def fail():
        raise RuntimeError("no nvidia packages")

    monkeypatch.setattr(providers_mod.ort, "preload_dlls", fail)
    with caplog.at_level(logging.WARNING, logger="imgclf.runtime.providers"):
        providers_mod.preload_cuda_libraries.__wrapped__()
    assert "preloading the CUDA libraries failed: no nvidia packages" in caplog.text
