"""How one ONNX Runtime session of a model executes: `ExecutionOptions` (providers, threads,
spinning, the CUDA and TensorRT knobs) and the session options they make. What the server's
sessions and the bench's in-process limit share (imgclf.client.bench.limit), so that the limit
runs the model the way the server does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
ARENA_EXTEND_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")

INTRA_OP_SPINNING = "session.intra_op.allow_spinning"
INTER_OP_SPINNING = "session.inter_op.allow_spinning"
EXACT_INT8_PRODUCTS = "session.x64quantprecision"
"""Set to "1": ONNX Runtime's U8S8 kernels on x86 CPUs without VNNI (SSE4.1, AVX2, AVX-512
without VNNI) add pairs of u8 x s8 products in saturating 16-bit arithmetic (vpmaddubsw), so
an INT8 model computes there something else than on a CPU with VNNI and than its accuracy gate
measured (EfficientNet-Lite0: top-1 agreement with FP32 76.9 % instead of 88.9 %). With "1"
those CPUs run exact U8U8 kernels instead (slower) for weights outside [-64, 64]; 7-bit
weights (`imgclf export --weight-bits 7`) keep the fast kernels, exact for them (255 x 64 x 2
fits 16 bits; measured: identical outputs with and without the option). No effect with VNNI
or on float models."""


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


def session_options(options: ExecutionOptions) -> ort.SessionOptions:
    """ONNX Runtime session options: full graph optimisation, threads, spinning, quiet log,
    exact INT8 arithmetic (EXACT_INT8_PRODUCTS)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry(INTRA_OP_SPINNING, spin)
    so.add_session_config_entry(INTER_OP_SPINNING, spin)
    so.add_session_config_entry(EXACT_INT8_PRODUCTS, "1")
    return so
