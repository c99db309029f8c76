"""One ONNX Runtime session of a model version (`Engine`): the providers it really runs on
(read back from the session and reported, so a silent fallback to CPU is never mistaken for
GPU execution), its input and output, IO binding on the GPU, batch buckets, float16 models,
warm-up and the run itself. The options are imgclf.runtime.options, the provider choice
imgclf.runtime.providers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import onnxruntime as ort

from imgclf.errors import InvalidInput
from imgclf.runtime.buckets import BucketRunner, plain_run_options
from imgclf.runtime.options import ExecutionOptions, session_options
from imgclf.runtime.providers import CPU, CUDA, TENSORRT, choose_providers, preload_cuda_libraries
from imgclf.runtime.sharedweights import SharedWeights

log = logging.getLogger(__name__)

INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
}


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
    feature_name: str | None = None
    """The feature tensor the graph also outputs (class activation maps), fetched only by
    `run(batch, features=True)`; None: the model's outputs only."""


def share_weights(path: Path, options: ExecutionOptions) -> SharedWeights | None:
    """The weights every CPU session of the model at `path` can share (optimised once with
    these options), or None when the sessions would not run on the CPU alone."""
    requested, _ = choose_providers(options, model_path=path)
    if requested != [CPU]:
        return None
    try:
        return SharedWeights.build(path, session_options(options))
    except Exception as e:  # e.g. an optimised model past protobuf's 2 GB: one copy each
        log.warning("%s: weights not shared, each session loads its own: %s", path, e)
        return None


class Engine:
    """One ONNX Runtime session for one model version. `run` is thread-safe.

    With `shared` weights (service/sharedweights.py) a CPU session takes the model
    version's one copy of its optimised weights and the process's shared arena. `feature`
    names a tensor the graph at `path` outputs beside the model's output (the graph edited by
    imgclf.models.cam.with_output): plain runs do not fetch it."""

    def __init__(
        self,
        path: Path,
        options: ExecutionOptions,
        shared: SharedWeights | None = None,
        feature: str | None = None,
    ) -> None:
        self.options = options
        requested, reason = choose_providers(options, model_path=path)
        names = [p if isinstance(p, str) else p[0] for p in requested]
        for p in requested:
            if isinstance(p, tuple) and "trt_engine_cache_path" in p[1]:
                Path(p[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        if CUDA in names:
            preload_cuda_libraries()
        self.shares_weights = shared is not None and names == [CPU]
        if shared is not None and self.shares_weights:
            self._session = shared.session(session_options(options))
        else:
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
        out = [o for o in self._session.get_outputs() if o.name != feature]
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
            feature_name=feature,
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

    @overload
    def run(self, batch: np.ndarray, features: Literal[False] = False) -> np.ndarray: ...
    @overload
    def run(self, batch: np.ndarray, features: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...

    def run(
        self, batch: np.ndarray, features: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Run one batch (N, C, H, W) float32, or (N, H, W, C) uint8 pixels for a uint8 model;
        returns the first output (N, classes) float32, and with `features` the feature
        tensor (N, C, h, w) float32 too (one run fetching both)."""
        batch = np.ascontiguousarray(batch, dtype=self._input_dtype)
        if features:
            return self._run_with_features(batch)
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

    def _run_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A run outside the buckets that fetches the model's output and the feature tensor."""
        name = self.info.feature_name
        if name is None:
            raise RuntimeError("this session has no feature output")
        outputs = [self.info.output_name, name]
        if self._bind:
            binding = self._session.io_binding()
            binding.bind_cpu_input(self.info.input_name, batch)
            for output in outputs:
                binding.bind_output(output, "cpu", 0)
            self._session.run_with_iobinding(binding, self._plain_options)
            out, feature = binding.copy_outputs_to_cpu()
        else:
            out, feature = self._session.run(
                outputs, {self.info.input_name: batch}, self._plain_options
            )
        return (
            np.asarray(out).astype(np.float32, copy=False),
            np.asarray(feature).astype(np.float32, copy=False),
        )

    def output_shape_for_one(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape of one real run on a zero image (load-time check)."""
        batch = np.zeros((1, *sample_shape), dtype=self._input_dtype)
        return tuple(self._run_plain(batch).shape)

    def warmup(self, batch_sizes: list[int], sample_shape: tuple[int, ...]) -> None:
        for n in batch_sizes:
            self.run(np.zeros((n, *sample_shape), dtype=np.float32))
