"""One copy of a model version's weights for every CPU session of it, and one memory arena.

ONNX Runtime gives each session its own copy of the weights (and of the weights its graph
optimisations derive: fused batch norms, reordered convolution filters) and its own memory
arena, about 90 MB a session for an 18.6 MB EfficientNet-Lite0. Here the graph is optimised
once per model version; its initializers become one set of OrtValues over numpy buffers that
every session of the version takes through `SessionOptions.add_initializer` (ONNX Runtime
then uses the buffer, it copies nothing), and every session allocates from one CPU arena
registered on the ONNX Runtime environment (`session.use_env_allocators`). The sessions then
run the very graph and weights an unshared session would: the outputs are identical bit for
bit (tests/unit/service/test_sharedweights.py). Kernels still pre-pack some weights per
session; the Python API has no shared pre-packed weights container (docs/performance.md has
the measurements).

The initializers are read from the optimised model through imgclf.onnxgraph (no `onnx`
package in the serving install).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from imgclf.onnxgraph import DTYPES, parse

USE_ENV_ALLOCATORS = "session.use_env_allocators"
OPTIMISED = "model.optimised.onnx"
MIN_SHARED_BYTES = 1024
"""Smaller initializers are left to each session: they weigh nothing."""


def initializers(model_bytes: bytes) -> dict[str, np.ndarray]:
    """A serialised model's initializers of MIN_SHARED_BYTES or more stored as raw data in
    the file (how ONNX Runtime saves an optimised model), as arrays of their own."""
    model = parse(model_bytes)
    arrays: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        dtype = DTYPES.get(tensor.data_type)
        if dtype is None or tensor.data_location != 0 or len(tensor.raw_data) < MIN_SHARED_BYTES:
            continue
        array = np.frombuffer(tensor.raw_data, dtype=dtype).reshape(tuple(tensor.dims))
        arrays[tensor.name] = array.copy()  # writable, aligned, owned
    return arrays


@functools.cache
def register_shared_arena() -> None:
    """Register one CPU arena allocator on the ONNX Runtime environment (once per process):
    sessions that set `session.use_env_allocators` allocate from it instead of an arena each."""
    memory = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    # max memory, extend strategy, initial chunk, max dead bytes per chunk: the defaults.
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))


@dataclass
class SharedWeights:
    """A model version's graph, optimised once for the CPU, and its weights in one buffer
    each, for every CPU session of the version."""

    folder: tempfile.TemporaryDirectory[str] | None
    """Holds the optimised model, which each session reads (weights included: ONNX Runtime
    checks every initializer's data, then takes the shared buffer in its place); removed by
    `release` once the version's sessions exist. (A file, not bytes: a session made from
    bytes keeps them for its whole life.)"""
    values: dict[str, ort.OrtValue]
    """Initializer name -> OrtValue over `arrays`' buffer."""
    arrays: dict[str, np.ndarray]
    """The weights' buffers (held here: the OrtValues do not own them)."""

    @property
    def nbytes(self) -> int:
        """Bytes of weights held once for the whole version."""
        return sum(a.nbytes for a in self.arrays.values())

    @classmethod
    def build(cls, path: Path, options: ort.SessionOptions) -> SharedWeights:
        """Optimise the model at `path` once, with `options` (those of the sessions that will
        use it: the same optimisation level), and take its weights out. The optimised graph
        is that of a CPU session on this host (convolution layouts for its instruction set):
        for this process's CPU sessions only."""
        register_shared_arena()
        folder = tempfile.TemporaryDirectory(prefix="imgclf-optimised-")
        try:
            optimised = Path(folder.name) / OPTIMISED
            options.optimized_model_filepath = str(optimised)
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            arrays = initializers(optimised.read_bytes())
        except BaseException:
            folder.cleanup()
            raise
        values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}
        return cls(folder=folder, values=values, arrays=arrays)

    def session(self, options: ort.SessionOptions) -> ort.InferenceSession:
        """A CPU session of the optimised model that takes the shared weights and allocates
        from the shared arena. (Its graph is already optimised: optimising it again at the
        caller's level finds nothing more to do.)"""
        if self.folder is None:
            raise RuntimeError("the shared weights were released: no more sessions")
        register_shared_arena()
        for name, value in self.values.items():
            options.add_initializer(name, value)
        options.add_session_config_entry(USE_ENV_ALLOCATORS, "1")
        optimised = Path(self.folder.name) / OPTIMISED
        return ort.InferenceSession(str(optimised), options, providers=["CPUExecutionProvider"])

    def release(self) -> None:
        """Remove the optimised model's file (the sessions keep the shared weights)."""
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None
