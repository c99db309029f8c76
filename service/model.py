"""A loaded model version: metadata, ONNX Runtime instances, batcher, statistics.

`load_model` is blocking (file reads, session creation, warm-up): the manager runs it off
the event loop. `ServedModel.start` and `retire` run on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.batching import Batcher, BatchStats
from service.cpus import cpus
from service.engine import CPU, Engine, ExecutionOptions, softmax
from service.metrics import Metrics
from service.modelmeta import ModelMetadata
from service.repository import ModelConfig, ModelEntry
from service.settings import ServerSettings
from service.stats import ModelStats

log = logging.getLogger(__name__)

PROVIDER_OF_KIND = {"cpu": "cpu", "gpu": "cuda"}


@dataclass
class ServedModel:
    name: str
    version: int
    metadata: ModelMetadata
    config: ModelConfig
    engines: list[Engine]
    batcher: Batcher
    max_batch_size: int
    default_timeout_s: float | None
    fingerprint: tuple[int, int, int]
    stats: ModelStats = field(default_factory=ModelStats)
    _users: int = 0
    _idle: asyncio.Event | None = None

    @property
    def engine(self) -> Engine:
        return self.engines[0]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        h, w = self.metadata.input_size
        return (3, h, w)

    @property
    def num_classes(self) -> int:
        return len(self.metadata.labels)

    def start(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        self.batcher.start()

    @contextlib.contextmanager
    def use(self) -> Iterator[ServedModel]:
        """Hold the model for one request; `retire` waits until no request holds it."""
        assert self._idle is not None, "model not started"
        self._users += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._users -= 1
            if self._users == 0:
                self._idle.set()

    async def retire(self) -> None:
        """Wait for every request holding the model, drain its queue, stop its workers."""
        if self._idle is not None:
            await self._idle.wait()
        await self.batcher.close()

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs (N, classes) -> probabilities (N, classes) float32."""
        outputs = outputs.astype(np.float32, copy=False)
        return softmax(outputs) if self.metadata.output == "logits" else outputs


def execution_options(
    config: ModelConfig, settings: ServerSettings, instance: int, instances: int
) -> ExecutionOptions:
    """The ONNX Runtime options of one of a model's `instances`."""
    providers = config.providers or PROVIDER_OF_KIND.get(config.instance_kind)
    if providers is None:
        providers = settings.providers
    if settings.require_gpu and providers in ("auto", "cpu"):
        providers = "cuda"
    gpus = config.gpus or [settings.gpu_id]
    threads = config.intra_op_threads
    if threads is None:
        threads = settings.intra_op_threads or max(1, cpus() // instances)
    extra = {
        key: value
        for key in ("cudnn_conv_algo_search", "gpu_mem_limit_bytes", "arena_extend_strategy")
        if (value := getattr(config, key)) is not None
    }
    return ExecutionOptions(
        providers=providers,
        gpu_id=gpus[instance % len(gpus)],
        intra_op_threads=threads,
        tensorrt_fp16=config.tensorrt_fp16,
        tensorrt_cache_dir=settings.tensorrt_cache_dir,
        allow_spinning=settings.allow_spinning,
        io_binding=settings.io_binding,
        **extra,
    )


def create_engines(
    path: Path, config: ModelConfig, settings: ServerSettings
) -> tuple[list[Engine], int]:
    """The model's sessions, and how many batches each runs at once.

    Configured (`instances` N): N sessions, one batch at a time each, the cores divided among
    them. Auto: one session whose intra-op pool spans every core; on the CPU it runs one batch
    per core at once, so a lone request gets every core (lowest latency) and concurrent ones
    share them; on a GPU one batch at a time. On 2 cores this measured best of the three
    layouts tried, within the noise of the others (docs/performance.md)."""
    count = config.instances or settings.instances
    if count:
        engines = [
            Engine(path, execution_options(config, settings, i, count)) for i in range(count)
        ]
        return engines, 1
    engine = Engine(path, execution_options(config, settings, 0, 1))
    return [engine], (cpus() if engine.info.provider == CPU else 1)


AUTO_MAX_BATCH = 8
BATCHING_PAYS_BELOW_S = 0.005


def auto_batch_size(engine: Engine, sample_shape: tuple[int, ...], limit: int) -> int:
    """The max batch size when none is configured. On a GPU batches pay: `limit`. On CPU cores
    a model that needs milliseconds per image computes as fast one image at a time (measured
    for EfficientNet-Lite0 on 2 cores: batch 4 costs more per image than batch 1), and batches
    only add waiting; a model that takes well under a few milliseconds is dominated by per-call
    overhead, which batches amortise. So: time one image (the best of 5 runs) and batch only
    below BATCHING_PAYS_BELOW_S."""
    if engine.info.provider != CPU:
        return limit
    batch = np.zeros((1, *sample_shape), dtype=np.float32)
    engine.run(batch)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        engine.run(batch)
        best = min(best, time.perf_counter() - started)
    return limit if best < BATCHING_PAYS_BELOW_S else 1


def load_model(
    entry: ModelEntry, config: ModelConfig, settings: ServerSettings, metrics: Metrics
) -> ServedModel:
    """Open the ONNX file, read and check its metadata, create its instances, warm them up."""
    started = time.monotonic()
    fingerprint = entry.fingerprint()
    engines, runs_per_engine = create_engines(entry.path, config, settings)
    engine = engines[0]
    metadata = ModelMetadata.from_props(engine.metadata_props, overrides=entry.read_sidecar())
    h, w = metadata.input_size
    engine.check_sample_shape((3, h, w))
    max_batch = config.max_batch_size or settings.max_batch_size or AUTO_MAX_BATCH
    batch_dim = engine.info.input_shape[0]
    if isinstance(batch_dim, int):
        if batch_dim != 1:
            raise ValueError(
                f"{entry.path}: the batch axis is fixed at {batch_dim}; export with a dynamic "
                "batch axis (or a fixed batch of 1)"
            )
        max_batch = 1
    # One real run: the output must be (batch, classes) with a column per label, whatever the
    # graph declares (its class axis may be symbolic).
    shape = engine.output_shape_for_one((3, h, w))
    if len(shape) != 2 or shape[1] != len(metadata.labels):
        raise ValueError(
            f"model output has shape {list(shape)} for one image, but the metadata names "
            f"{len(metadata.labels)} labels"
        )
    if not (config.max_batch_size or settings.max_batch_size):
        max_batch = auto_batch_size(engine, (3, h, w), max_batch)
    if settings.warmup:
        sizes = list(range(1, max_batch + 1))
        for e in engines:
            e.warmup(sizes, (3, h, w))
    labels = {"model": entry.name, "version": str(entry.version)}
    stats = ModelStats()

    def on_batch(b: BatchStats) -> None:
        stats.record_batch(b.size, b.queue_seconds, b.input_seconds, b.inference_seconds)
        metrics.batch_size.labels(**labels).observe(b.size)
        metrics.compute_input_duration.labels(**labels).observe(b.input_seconds)
        metrics.inference_duration.labels(**labels).observe(b.inference_seconds)
        queue = metrics.queue_duration.labels(**labels)
        for seconds in b.queue_seconds:
            queue.observe(seconds)

    def on_depth(depth: int) -> None:
        metrics.queue_depth.labels(**labels).set(depth)

    delay_ms = config.max_queue_delay_ms
    if delay_ms is None:
        delay_ms = settings.max_queue_delay_ms
    timeout_ms = config.default_timeout_ms
    if timeout_ms is None:
        timeout_ms = settings.default_timeout_ms
    batcher = Batcher(
        [e.run for e in engines for _ in range(runs_per_engine)],
        max_batch_size=max_batch,
        max_delay_s=delay_ms / 1000.0,
        max_queue_size=config.max_queue_size or settings.max_queue_size,
        preferred_batch_sizes=config.preferred_batch_sizes,
        priority_levels=config.priority_levels,
        default_priority_level=config.default_priority_level,
        on_batch=on_batch,
        on_depth=on_depth,
        name=entry.name,
    )
    metrics.queue_capacity.labels(**labels).set(batcher.max_queue_size)
    elapsed = time.monotonic() - started
    metrics.model_load_duration.labels(**labels).set(elapsed)
    log.info(
        "model %s version %s loaded in %.2fs: %d classes, input %dx%d, max batch %d, "
        "%d session(s) x %d concurrent run(s) on %s (%s)",
        entry.name, entry.version, elapsed, len(metadata.labels), h, w, max_batch,
        len(engines), runs_per_engine, engine.info.provider, engine.info.reason,
    )  # fmt: skip
    return ServedModel(
        name=entry.name,
        version=entry.version,
        metadata=metadata,
        config=config,
        engines=engines,
        batcher=batcher,
        max_batch_size=max_batch,
        default_timeout_s=timeout_ms / 1000.0 if timeout_ms else None,
        fingerprint=fingerprint,
        stats=stats,
    )
