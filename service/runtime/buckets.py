"""Preallocated input and output buffers per batch size bucket, on the session's device.

For GPU sessions (CUDA, TensorRT). A batch of n images runs in the smallest bucket of at
least n images: its rows are copied into the bucket's host staging array, that array into
the bucket's device input (one host-to-device copy, into memory allocated once at load), the
bucket's IOBinding runs, and the first n rows of its device output come back (one copy).
Rows past n keep whatever an earlier batch left there: a classifier's rows are independent
(batch norm runs on its stored statistics at inference), and those rows are never returned.

With CUDA graphs on (ONNX Runtime's `enable_cuda_graph` on the CUDA provider), each bucket
has its own graph, chosen by the run option `gpu_graph_id`: a bucket's first runs capture
it, later runs replay the whole model in one launch. A captured graph keeps the addresses of
its input and output, which is why they are allocated once per bucket and never replaced,
and why every other run of such a session (`plain_run_options`) must say `gpu_graph_id` -1.
`BucketRunner.prepare` captures every bucket at load and checks each one against a plain run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

GRAPH_ID = "gpu_graph_id"
"""ONNX Runtime run option: which CUDA graph a run captures or replays (0 is reserved for
ONNX Runtime; -1: neither)."""
NO_GRAPH = "-1"
PREPARE_RUNS = 3
"""Runs per bucket at load: ONNX Runtime runs a graph's model once normally (allocating what
it needs), captures on the next run, and the third replays the capture."""
OUTPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def bucket_sizes(max_batch: int) -> list[int]:
    """Powers of two below `max_batch`, then `max_batch` itself: 8 -> [1, 2, 4, 8], 6 ->
    [1, 2, 4, 6]. A batch then pays for at most twice its rows (or the largest bucket)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def plain_run_options(graphs: bool) -> ort.RunOptions | None:
    """Run options for a run outside the buckets: on a session with CUDA graphs on, such a
    run must neither capture nor replay one (its buffers are not the buckets')."""
    if not graphs:
        return None
    options = ort.RunOptions()
    options.add_run_config_entry(GRAPH_ID, NO_GRAPH)
    return options


@dataclass
class _Bucket:
    size: int
    staging: np.ndarray
    """Host array the batch's rows are copied into."""
    input: ort.OrtValue
    output: ort.OrtValue
    binding: ort.IOBinding
    run_options: ort.RunOptions


class BucketRunner:
    """Runs batches of up to `max(sizes)` images through per-bucket device buffers. `run` is
    thread-safe (one batch at a time: the buffers are shared)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        sample_shape: tuple[int, ...],
        input_dtype: type[np.generic],
        classes: int,
        sizes: Sequence[int],
        device_type: str,
        device_id: int,
        graphs: bool,
    ) -> None:
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        if out.type not in OUTPUT_TYPES:
            raise ValueError(f"output must be float32 or float16, found {out.type}")
        self._session = session
        self.graphs = graphs
        self.sizes = sorted(set(sizes))
        self._lock = threading.Lock()
        self._buckets: list[_Bucket] = []
        for graph_id, size in enumerate(self.sizes, start=1):
            staging = np.zeros((size, *sample_shape), dtype=input_dtype)
            value_in = ort.OrtValue.ortvalue_from_shape_and_type(
                list(staging.shape), input_dtype, device_type, device_id
            )
            value_out = ort.OrtValue.ortvalue_from_shape_and_type(
                [size, classes], OUTPUT_TYPES[out.type], device_type, device_id
            )
            binding = session.io_binding()
            binding.bind_ortvalue_input(inp.name, value_in)
            binding.bind_ortvalue_output(out.name, value_out)
            run_options = ort.RunOptions()
            run_options.add_run_config_entry(GRAPH_ID, str(graph_id) if graphs else NO_GRAPH)
            self._buckets.append(_Bucket(size, staging, value_in, value_out, binding, run_options))

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def bucket_for(self, n: int) -> int:
        """The size of the bucket a batch of `n` images runs in."""
        return self._bucket_for(n).size

    def _bucket_for(self, n: int) -> _Bucket:
        for bucket in self._buckets:
            if bucket.size >= n:
                return bucket
        raise ValueError(f"a batch of {n} images exceeds the largest bucket ({self.max_batch})")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run `batch` (already in the model's input dtype); returns its output rows (a new
        host array in the model's output dtype)."""
        n = len(batch)
        bucket = self._bucket_for(n)
        with self._lock:
            bucket.staging[:n] = batch
            bucket.input.update_inplace(bucket.staging)
            self._session.run_with_iobinding(bucket.binding, bucket.run_options)
            (out,) = bucket.binding.copy_outputs_to_cpu()
        return out[:n]

    def prepare(self, plain_run: Callable[[np.ndarray], np.ndarray]) -> None:
        """Run every bucket PREPARE_RUNS times (with graphs: capture, then replay) and check
        its last output against `plain_run` (a function running a batch outside the
        buckets) on the same images; raises RuntimeError on a mismatch."""
        rng = np.random.default_rng(0)
        for bucket in self._buckets:
            sample = bucket.staging.shape[1:]
            if bucket.staging.dtype == np.uint8:
                batch = rng.integers(0, 256, (bucket.size, *sample), dtype=np.uint8)
            else:
                batch = rng.standard_normal((bucket.size, *sample)).astype(bucket.staging.dtype)
            for _ in range(PREPARE_RUNS):
                got = self.run(batch)
            want = plain_run(batch)
            if not np.allclose(got, want, rtol=1e-3, atol=1e-3, equal_nan=True):
                worst = float(np.max(np.abs(got.astype(np.float64) - want)))
                kind = "the CUDA graph's replay" if self.graphs else "the bucket's run"
                raise RuntimeError(
                    f"batch bucket {bucket.size}: {kind} differs from a plain run by up to "
                    f"{worst:.3g}; serve without CUDA graphs (--no-cuda-graphs)"
                )
