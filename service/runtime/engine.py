"""ONNX Runtime: execution options, provider choice, the session, warm-up and the run itself.

A GPU provider is requested only when it can really work (ONNX Runtime lists it and the CUDA
driver library loads). The provider that actually runs is read back from the session and
reported, so a silent fallback to CPU is never mistaken for GPU execution: `auto` reports the
fallback and its cause, `cuda` and `tensorrt` refuse to start instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from imgclf.errors import InvalidInput
from imgclf.runtime.buckets import BucketRunner, plain_run_options

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
ARENA_EXTEND_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
}

INTRA_OP_SPINNING = "session.intra_op.allow_spinning"
INTER_OP_SPINNING = "session.inter_op.allow_spinning"

ProviderList = list[str | tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class ExecutionOptions:
    """How one ONNX Runtime session of a model executes."""

    providers: str = "auto"
    """auto (CUDA when really available, else CPU), cpu, or cuda / tensorrt (required: the
    engine refuses to start rather than fall back to CPU)."""
    gpu_id: int = 0
    """CUDA device id."""
    intra_op_threads: int = 0
    """CPU threads inside one operator (0: ONNX Runtime's default, one per core)."""
    inter_op_threads: int = 1
    """CPU threads across operators (the graph runs sequentially, so 1 is enough)."""
    allow_spinning: bool = False
    """Let idle CPU worker threads spin for the next task: a little lower latency under
    steady load, but an idle instance then burns cores that other instances need."""
    cudnn_conv_algo_search: str = "HEURISTIC"
    """CUDA: how cuDNN picks convolution algorithms (EXHAUSTIVE, HEURISTIC, DEFAULT)."""
    gpu_mem_limit_bytes: int = 0
    """CUDA: memory arena limit in bytes (0: no limit)."""
    arena_extend_strategy: str = "kNextPowerOfTwo"
    """CUDA: how the memory arena grows (kNextPowerOfTwo or kSameAsRequested)."""
    tensorrt_fp16: bool = False
    """TensorRT: allow FP16 kernels."""
    tensorrt_cache_dir: Path | None = None
    """TensorRT: where built engines are cached, one folder per model hash and runtime
    version (None: no cache, engines are rebuilt at every start)."""
    io_binding: bool = True
    """CUDA/TensorRT: run through an IOBinding (unused on CPU)."""
    cuda_graphs: bool = False
    """CUDA (not TensorRT): capture a CUDA graph per batch bucket and replay it (needs
    io_binding and every node of the model on the CUDA provider)."""

    @property
    def graphs_requested(self) -> bool:
        """Whether the CUDA provider is asked for CUDA graphs (never with TensorRT first)."""
        return self.cuda_graphs and self.io_binding and self.providers != "tensorrt"

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"invalid execution option: {message}")

        check(
            self.providers in PROVIDER_CHOICES,
            f"providers must be one of {', '.join(PROVIDER_CHOICES)}, not {self.providers!r}",
        )
        check(self.gpu_id >= 0, f"gpu_id must be >= 0, not {self.gpu_id}")
        check(self.intra_op_threads >= 0, "intra_op_threads must be >= 0")
        check(self.inter_op_threads >= 0, "inter_op_threads must be >= 0")
        check(
            self.cudnn_conv_algo_search in CONV_ALGO_SEARCHES,
            f"cudnn_conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCHES)}, "
            f"not {self.cudnn_conv_algo_search!r}",
        )
        check(self.gpu_mem_limit_bytes >= 0, "gpu_mem_limit_bytes must be >= 0")
        check(
            self.arena_extend_strategy in ARENA_EXTEND_STRATEGIES,
            f"arena_extend_strategy must be one of {', '.join(ARENA_EXTEND_STRATEGIES)}, "
            f"not {self.arena_extend_strategy!r}",
        )
        if isinstance(self.tensorrt_cache_dir, str):
            object.__setattr__(self, "tensorrt_cache_dir", Path(self.tensorrt_cache_dir))


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


def session_options(options: ExecutionOptions) -> ort.SessionOptions:
    """ONNX Runtime session options: full graph optimisation, threads, spinning, quiet log."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry(INTRA_OP_SPINNING, spin)
    so.add_session_config_entry(INTER_OP_SPINNING, spin)
    return so


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


def run_with_binding(
    session: ort.InferenceSession,
    input_name: str,
    output_name: str,
    batch: np.ndarray,
    device_type: str,
    device_id: int,
    run_options: ort.RunOptions | None = None,
) -> np.ndarray:
    """One run through an IOBinding of its own (so concurrent calls never share one): the
    batch bound from CPU memory, the output allocated on `device_type`:`device_id`, and
    returned as a numpy array in CPU memory."""
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, np.ascontiguousarray(batch))
    binding.bind_output(output_name, device_type, device_id)
    session.run_with_iobinding(binding, run_options)
    (out,) = binding.copy_outputs_to_cpu()
    return out


@dataclass(frozen=True)
class EngineInfo:
    provider: str
    """The provider that really runs the model's nodes first in priority."""
    reason: str
    input_name: str
    output_name: str
    input_shape: tuple[int | str | None, ...]
    output_shape: tuple[int | str | None, ...]
    input_type: str
    """The model's input type (ORT type string). For tensor(float16), `run` casts the
    float32 batch to float16 and the output back to float32; tensor(uint8) takes pixels."""
    io_binding: bool = False
    """Whether `run` goes through an IOBinding."""
    cuda_graphs: bool = False
    """Whether the session captures and replays CUDA graphs (one per batch bucket)."""


class Engine:
    """One ONNX Runtime session for one model version. `run` is thread-safe."""

    def __init__(self, path: Path, options: ExecutionOptions) -> None:
        self.options = options
        requested, reason = choose_providers(options, model_path=path)
        names = [p if isinstance(p, str) else p[0] for p in requested]
        for p in requested:
            if isinstance(p, tuple) and "trt_engine_cache_path" in p[1]:
                Path(p[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        if CUDA in names:
            preload_cuda_libraries()
        self._session = ort.InferenceSession(
            str(path), session_options(options), providers=requested
        )
        active = self._session.get_providers()[0]
        if active != names[0]:
            why = (
                f"{names[0]} was requested but ONNX Runtime could not start it (missing CUDA, "
                f"cuDNN or TensorRT libraries, or GPU {options.gpu_id} unusable?)"
            )
            if options.providers in ("cuda", "tensorrt"):
                raise RuntimeError(
                    f"{options.providers} execution required but ONNX Runtime runs {active}: {why}"
                )
            log.warning("%s: %s; running on %s", path, why, active)
            reason = f"CPU fallback: {why}"
        inp = self._session.get_inputs()
        out = self._session.get_outputs()
        if len(inp) != 1:
            raise ValueError(f"{path}: a classifier must have exactly one input, found {len(inp)}")
        if inp[0].type not in INPUT_TYPES:
            raise ValueError(
                f"{path}: input must be float32, float16 or uint8, found {inp[0].type}"
            )
        self._input_dtype = INPUT_TYPES[inp[0].type]
        self._bind = options.io_binding and active in (CUDA, TENSORRT)
        graphs = self._bind and active == CUDA and options.graphs_requested
        self._plain_options = plain_run_options(graphs)
        self._buckets: BucketRunner | None = None
        self.info = EngineInfo(
            provider=active,
            reason=reason,
            input_name=inp[0].name,
            output_name=out[0].name,
            input_shape=tuple(inp[0].shape),
            output_shape=tuple(out[0].shape),
            input_type=inp[0].type,
            io_binding=self._bind,
            cuda_graphs=graphs,
        )
        self.metadata_props: dict[str, str] = dict(
            self._session.get_modelmeta().custom_metadata_map
        )

    def check_sample_shape(self, shape: tuple[int, ...]) -> None:
        """Raise InvalidInput unless one image of `shape` fits the model's input (sans batch)."""
        expected = self.info.input_shape[1:]
        if len(shape) != len(expected) or any(
            isinstance(e, int) and e != s for e, s in zip(expected, shape, strict=True)
        ):
            raise InvalidInput(
                f"tensor shape {list(shape)} does not match the model input "
                f"{[e if isinstance(e, int) else -1 for e in expected]}"
            )

    @property
    def buckets(self) -> list[int]:
        """The batch size buckets `run` uses (empty: none prepared)."""
        return self._buckets.sizes if self._buckets is not None else []

    def prepare_buckets(self, sizes: list[int], sample_shape: tuple[int, ...]) -> None:
        """Allocate input and output buffers per batch size bucket on the session's device
        (see imgclf.runtime.buckets), capture their CUDA graphs when on, and check each bucket
        against a plain run; `run` then goes through them."""
        gpu = self.info.provider in (CUDA, TENSORRT)
        classes = self.output_shape_for_one(sample_shape)[1]
        runner = BucketRunner(
            self._session, sample_shape, self._input_dtype, classes, sizes,
            "cuda" if gpu else "cpu", self.options.gpu_id if gpu else 0,
            graphs=self.info.cuda_graphs,
        )  # fmt: skip
        runner.prepare(self._run_plain)
        self._buckets = runner

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N, C, H, W) float32, or (N, H, W, C) uint8 pixels for a uint8 model;
        returns the first output (N, classes) float32."""
        batch = np.ascontiguousarray(batch, dtype=self._input_dtype)
        if self._buckets is not None and len(batch) <= self._buckets.max_batch:
            out = self._buckets.run(batch)
        else:
            out = self._run_plain(batch)
        return np.asarray(out).astype(np.float32, copy=False)

    def _run_plain(self, batch: np.ndarray) -> np.ndarray:
        """A run outside the buckets (never capturing or replaying a CUDA graph)."""
        if self._bind:
            # Output bound to CPU memory: ONNX Runtime copies it back within the run.
            return run_with_binding(
                self._session, self.info.input_name, self.info.output_name, batch, "cpu", 0,
                self._plain_options,
            )  # fmt: skip
        (out,) = self._session.run(
            [self.info.output_name], {self.info.input_name: batch}, self._plain_options
        )
        return np.asarray(out)

    def output_shape_for_one(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape of one real run on a zero image (load-time check)."""
        batch = np.zeros((1, *sample_shape), dtype=self._input_dtype)
        return tuple(self._run_plain(batch).shape)

    def warmup(self, batch_sizes: list[int], sample_shape: tuple[int, ...]) -> None:
        for n in batch_sizes:
            self.run(np.zeros((n, *sample_shape), dtype=np.float32))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)
