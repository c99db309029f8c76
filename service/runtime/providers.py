"""Which ONNX Runtime execution providers a session asks for, and why.

A GPU provider is requested only when it can really work: ONNX Runtime lists it and the CUDA
driver library loads (`cuda_driver_present`). `auto` falls back to CPU and says why; `cuda`
and `tensorrt` refuse to start instead. The provider option dicts live here, with the
TensorRT engine cache, keyed by the model's bytes, the runtime versions and the precision
(`model_cache_key`), and the preloading of the CUDA libraries of the nvidia-* packages.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import io
import logging
from pathlib import Path

import onnxruntime as ort

from imgclf.runtime.options import ExecutionOptions

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

ProviderList = list[str | tuple[str, dict[str, str]]]


def cuda_driver_present() -> bool:
    """Whether the CUDA driver library (libcuda) can be loaded on this host."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


@functools.cache
def tensorrt_version() -> str | None:
    """The TensorRT version this host would run, when it can be found out cheaply."""
    for dist in (
        "tensorrt",
        "tensorrt-cu13",
        "tensorrt-cu12",
        "tensorrt-cu13-libs",
        "tensorrt-cu12-libs",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    for name in ("libnvinfer.so.10", "libnvinfer.so", "nvinfer_10.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        get_version = getattr(lib, "getInferLibVersion", None)
        if get_version is not None:
            get_version.restype = ctypes.c_int
            return f"lib{get_version()}"
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_cache_key(path: Path, options: ExecutionOptions) -> str:
    """Name of the TensorRT engine cache folder of this model under these options.

    Keyed by the model's content, the ONNX Runtime version, the TensorRT version (or "trt"
    when it cannot be found out) and the precision, so a changed model or runtime never
    reuses a stale engine. (ONNX Runtime adds the GPU's compute capability to the file names.)
    """
    trt = tensorrt_version()
    return "-".join(
        [
            file_sha256(path)[:16],
            f"ort{ort.__version__}",
            f"trt{trt}" if trt else "trt",
            "fp16" if options.tensorrt_fp16 else "fp32",
        ]
    )


def cuda_provider_options(options: ExecutionOptions) -> dict[str, str]:
    opts = {
        "device_id": str(options.gpu_id),
        "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
        "arena_extend_strategy": options.arena_extend_strategy,
        "do_copy_in_default_stream": "1",
    }
    if options.graphs_requested:
        opts["enable_cuda_graph"] = "1"
    if options.gpu_mem_limit_bytes:
        opts["gpu_mem_limit"] = str(options.gpu_mem_limit_bytes)
    return opts


def tensorrt_provider_options(
    options: ExecutionOptions, model_path: Path | None = None
) -> dict[str, str]:
    opts = {
        "device_id": str(options.gpu_id),
        "trt_fp16_enable": str(options.tensorrt_fp16),
        "trt_engine_cache_enable": "False",
    }
    if options.tensorrt_cache_dir is not None:
        if model_path is None:
            raise ValueError("a TensorRT engine cache needs the model path to key it")
        cache = options.tensorrt_cache_dir / model_cache_key(model_path, options)
        opts |= {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            # The timing cache follows the engine cache path (never the working directory).
            "trt_timing_cache_enable": "True",
        }
    return opts


def choose_providers(
    options: ExecutionOptions,
    available: list[str] | None = None,
    driver_present: bool | None = None,
    *,
    model_path: Path | None = None,
) -> tuple[ProviderList, str]:
    """The provider list to request (with option dicts), and a sentence saying why.

    `available` defaults to what ONNX Runtime lists, `driver_present` to whether libcuda
    loads; `model_path` keys the TensorRT engine cache. With auto, CUDA is requested only if
    both hold, otherwise CPU with the cause; cuda and tensorrt raise RuntimeError instead.
    """
    if options.providers == "cpu":
        return [CPU], "CPU requested"
    available = ort.get_available_providers() if available is None else available
    if CUDA not in available:
        cause = "this ONNX Runtime build has no CUDA provider"
    elif not (cuda_driver_present() if driver_present is None else driver_present):
        cause = "CUDA provider installed but no CUDA driver (libcuda) on this host"
    elif options.providers == "tensorrt" and TENSORRT not in available:
        cause = "this ONNX Runtime build has no TensorRT provider"
    else:
        cause = ""
    if cause:
        if options.providers in ("cuda", "tensorrt"):
            raise RuntimeError(f"{options.providers} execution required but unavailable: {cause}")
        return [CPU], f"CPU fallback: {cause}"
    cuda = (CUDA, cuda_provider_options(options))
    if options.providers == "tensorrt":
        trt = (TENSORRT, tensorrt_provider_options(options, model_path))
        return [trt, cuda, CPU], f"TensorRT available (device {options.gpu_id})"
    return [cuda, CPU], f"CUDA available (device {options.gpu_id})"


@functools.cache
def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* pip packages when those are how they were installed
    (ONNX Runtime's CUDA provider does not look there by itself). Once per process; what
    ONNX Runtime prints about it goes to the debug log."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as e:  # the readback of the active provider tells whether CUDA works
        log.warning("preloading the CUDA libraries failed: %s", e)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())
