"""ONNX Runtime: provider choice, session options, warm-up and the run itself.

CUDA is requested only when it can really work (ONNX Runtime lists the provider and the CUDA
driver library loads); the provider that actually runs is read back from the session and
reported, so a silent fallback to CPU is never mistaken for GPU execution.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import InvalidInput

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_driver_present() -> bool:
    """Whether the CUDA driver library (libcuda) can be loaded on this host."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def choose_providers(
    preference: str, gpu_id: int = 0, available: list[str] | None = None
) -> tuple[list[str | tuple[str, dict[str, str]]], str]:
    """The provider list to request, and a sentence saying why.

    `preference` is auto, cpu or cuda. With auto, CUDA is requested only if ONNX Runtime has the
    CUDA provider and the driver is present; otherwise CPU, and the reason is returned.
    """
    available = ort.get_available_providers() if available is None else available
    cuda_options = {"device_id": str(gpu_id)}
    if preference == "cpu":
        return [CPU], "CPU requested"
    if CUDA not in available:
        reason = "this ONNX Runtime build has no CUDA provider"
    elif not cuda_driver_present():
        reason = "CUDA provider installed but no CUDA driver (libcuda) on this host"
    else:
        return [(CUDA, cuda_options), CPU], f"CUDA available (device {gpu_id})"
    if preference == "cuda":
        raise RuntimeError(f"CUDA execution required but unavailable: {reason}")
    return [CPU], f"CPU fallback: {reason}"


@dataclass(frozen=True)
class EngineInfo:
    provider: str
    """The provider that really runs the model's nodes first in priority."""
    reason: str
    input_name: str
    output_name: str
    input_shape: tuple[int | str | None, ...]


class Engine:
    """One ONNX Runtime session for one model version. `run` is thread-safe."""

    def __init__(
        self,
        path: Path,
        providers: str = "auto",
        gpu_id: int = 0,
        intra_op_threads: int = 0,
    ) -> None:
        requested, reason = choose_providers(providers, gpu_id)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=requested)
        active = self._session.get_providers()
        if providers == "cuda" and active[0] != CUDA:
            raise RuntimeError(f"CUDA execution required but ONNX Runtime runs {active[0]}")
        inp = self._session.get_inputs()
        out = self._session.get_outputs()
        if len(inp) != 1:
            raise ValueError(f"{path}: a classifier must have exactly one input, found {len(inp)}")
        if inp[0].type != "tensor(float)":
            raise ValueError(f"{path}: input must be float32, found {inp[0].type}")
        self.info = EngineInfo(
            provider=active[0],
            reason=reason,
            input_name=inp[0].name,
            output_name=out[0].name,
            input_shape=tuple(inp[0].shape),
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

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N, C, H, W) float32; returns the first output (N, classes)."""
        (out,) = self._session.run([self.info.output_name], {self.info.input_name: batch})
        return np.asarray(out)

    def warmup(self, batch_sizes: list[int], sample_shape: tuple[int, ...]) -> None:
        for n in batch_sizes:
            self.run(np.zeros((n, *sample_shape), dtype=np.float32))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)
