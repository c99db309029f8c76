"""A loaded model version: metadata, ONNX Runtime instances, batcher, statistics.

`load_model` is blocking (file reads, session creation, warm-up): the manager runs it off
the event loop. `ServedModel.start` and `retire` run on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.metrics.prometheus import Metrics, ModelSeries
from imgclf.metrics.statistics import ModelStats
from imgclf.modelmeta import ModelMetadata
from imgclf.models.explainable import Explaining, graph_to_serve, inspect_head
from imgclf.models.repository import ModelConfig
from imgclf.models.sessions import (
    Engines,
    create_engines,
    served_variant,
    solo_options,
    wants_solo,
)
from imgclf.models.sizing import (
    AUTO_MAX_BATCH,
    auto_batch_size,
    seconds_per_image,
    solo_pays,
)
from imgclf.models.variants import Choice, describe_gate, variant_precision
from imgclf.repolayout import ModelEntry
from imgclf.runtime.batcher import Batcher, BatchStats
from imgclf.runtime.buckets import bucket_sizes
from imgclf.runtime.cores import Cores
from imgclf.runtime.engine import Engine
from imgclf.runtime.memory import rss_bytes, trim_heap
from imgclf.runtime.providers import CPU
from imgclf.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    name: str
    version: int
    metadata: ModelMetadata
    config: ModelConfig
    engines: Engines
    batcher: Batcher
    max_batch_size: int
    default_timeout_s: float | None
    fingerprint: tuple[int, int, int]
    series: ModelSeries
    stats: ModelStats = field(default_factory=ModelStats)
    precision: str = "fp32"
    """The variant served: fp32, fp16 or int8 (imgclf.models.variants)."""
    served_file: str = "model.onnx"
    """The file of the version folder that runs (model.onnx or model.int8.onnx)."""
    variant_reason: str = ""
    """Why that file (imgclf.models.variants), for the load log line."""
    memory_bytes: int | None = None
    """Resident memory the process gained loading this version (None: not measurable)."""
    explaining: Explaining = field(default_factory=lambda: Explaining(None, "not inspected"))
    """Its head for class activation maps, or why it gives none (imgclf.models.explainable)."""
    _users: int = 0
    _idle: asyncio.Event | None = None

    @property
    def engine(self) -> Engine:
        return self.engines.instances[0]

    @property
    def decodes_in_workers(self) -> bool:
        """On CPU an image is decoded by the worker that runs it, on the core that infers
        it; on a GPU by the decode pool, so decoding overlaps the GPU's batches."""
        return self.engine.info.provider == CPU

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.metadata.sample_shape

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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


def describe_buckets(engine: Engine) -> str:
    """For the load log line: the batch buckets and whether CUDA graphs replay them."""
    if not engine.buckets:
        return ""
    graphs = "CUDA graphs" if engine.info.cuda_graphs else "no CUDA graphs"
    return f"; IO binding, batch buckets {','.join(map(str, engine.buckets))} ({graphs})"


_LOADING = threading.Lock()
"""Loads take turns, so that the memory a load takes is that version's."""


def load_model(
    entry: ModelEntry,
    config: ModelConfig,
    settings: ServerSettings,
    metrics: Metrics,
    cores: Cores | None = None,
) -> ServedModel:
    """Open the ONNX file, read and check its metadata, create its instances, warm them up.

    Loads take turns; the resident memory the process gained over the load (freed heap
    handed back first: imgclf.runtime.memory) is the version's memory, reported as
    imgclf_model_memory_bytes and in the load log line."""
    with _LOADING:
        started = time.monotonic()
        trim_heap()
        before = rss_bytes()
        model = _load_model(entry, config, settings, metrics, cores)
        trim_heap()
        after = rss_bytes()
    elapsed = time.monotonic() - started
    metrics.model_load_duration.labels(**model.series.labels).set(elapsed)
    if before is not None and after is not None:
        model.memory_bytes = max(0, after - before)
        model.series.memory_bytes.set(model.memory_bytes)
    engines, engine = model.engines, model.engine
    h, w = model.metadata.input_size
    log.info(
        "model %s version %s loaded in %.2fs: %d classes, input %dx%d, max batch %d, "
        "%d instance(s) x %d intra-op thread(s)%s, precision %s (%s: %s) on %s (%s)%s; %s; %s",
        entry.name, entry.version, elapsed, model.num_classes, h, w, model.max_batch_size,
        len(engines.instances), engine.options.intra_op_threads,
        f" + solo session x {engines.solo.options.intra_op_threads}" if engines.solo else "",
        model.precision, model.served_file, model.variant_reason,
        engine.info.provider, engine.info.reason, describe_buckets(engine),
        describe_memory(model), describe_explaining(model.explaining),
    )  # fmt: skip
    if gate := describe_gate(model.metadata.provenance):
        log.info("model %s version %s %s: %s", entry.name, entry.version, model.precision, gate)
    return model


def describe_memory(model: ServedModel) -> str:
    """For the load log line: the memory the version took and its shared weights."""
    shared = model.engines.shared
    weights = (
        f", weights {shared.nbytes / 1e6:.1f} MB shared by {len(model.engines.all)} sessions"
        if shared is not None
        else ", weights per session"
    )
    if model.memory_bytes is None:
        return weights[2:]
    return f"{model.memory_bytes / 1e6:.1f} MB resident{weights}"


def describe_explaining(explaining: Explaining) -> str:
    """For the load log line: whether the version gives class activation maps."""
    if explaining.head is None:
        return f"no class activation maps ({explaining.why_not})"
    c = explaining.head.weight.shape[1]
    return f"class activation maps from {explaining.head.feature} ({c} channels)"


def check_shapes(
    entry: ModelEntry, engine: Engine, metadata: ModelMetadata, config: ModelConfig,
    settings: ServerSettings,
) -> int:  # fmt: skip
    """Check the model's input and output against its metadata; its largest batch before
    auto sizing (1 for a graph whose batch axis is fixed at 1)."""
    if metadata.pixel_input != (engine.info.input_type == "tensor(uint8)"):
        raise ValueError(
            f"{entry.path}: input {engine.info.input_type} with layout {metadata.input_layout}; "
            "a uint8 input takes NHWC pixels (input_layout NHWC, normalisation in the graph), "
            "a float input NCHW tensors"
        )
    sample = metadata.sample_shape
    engine.check_sample_shape(sample)
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
    shape = engine.output_shape_for_one(sample)
    if len(shape) != 2 or shape[1] != len(metadata.labels):
        raise ValueError(
            f"model output has shape {list(shape)} for one image, but the metadata names "
            f"{len(metadata.labels)} labels"
        )
    return max_batch


def batch_recorder(stats: ModelStats, series: ModelSeries) -> Callable[[BatchStats], None]:
    """What the batcher calls after each batch: statistics and metric series."""

    def on_batch(b: BatchStats) -> None:
        stats.record_batch(b.size, b.queue_seconds, b.input_seconds, b.inference_seconds)
        series.batch_size.observe(b.size)
        series.compute_input_duration.observe(b.input_seconds)
        series.inference_duration.observe(b.inference_seconds)
        for seconds in b.queue_seconds:
            series.queue_duration.observe(seconds)
        if b.solo:
            series.solo_batches.inc()
        for seconds in b.prepare_seconds:
            series.preprocess_duration.observe(seconds)

    return on_batch


def _load_model(
    entry: ModelEntry,
    config: ModelConfig,
    settings: ServerSettings,
    metrics: Metrics,
    cores: Cores | None,
) -> ServedModel:
    fingerprint = entry.fingerprint()
    choice = served_variant(entry, config, settings)
    explaining = inspect_head(choice.path, config)
    with graph_to_serve(choice.path, explaining) as graph:
        try:
            engines = create_engines(graph, config, settings, explaining.feature)
        except Exception as exc:
            if explaining.head is None:
                raise
            # e.g. weights in external data files, which the edited copy does not sit beside
            log.warning("%s: serving without class activation maps: %s", entry.path, exc)
            explaining = Explaining(None, f"its graph with the feature output did not load: {exc}")
            graph = choice.path
            engines = create_engines(graph, config, settings)
        model = _finish_load(entry, config, settings, metrics, cores, choice, engines, graph)
    model.fingerprint = fingerprint
    model.explaining = explaining
    return model


def _finish_load(
    entry: ModelEntry, config: ModelConfig, settings: ServerSettings, metrics: Metrics,
    cores: Cores | None, choice: Choice, engines: Engines, graph: Path,
) -> ServedModel:  # fmt: skip
    """The rest of a load once the instances exist (`graph`: the file they run)."""
    engine = engines.instances[0]
    metadata = ModelMetadata.from_props(engine.metadata_props, overrides=entry.read_sidecar())
    precision = variant_precision(choice, engine.info.input_type)
    sample = metadata.sample_shape
    max_batch = check_shapes(entry, engine, metadata, config, settings)
    auto_batch = not (config.max_batch_size or settings.max_batch_size)
    solo = wants_solo(engine, settings)
    per_image = None
    if engine.info.provider == CPU and (auto_batch or solo):
        per_image = seconds_per_image(engine, sample)
    if auto_batch:
        max_batch = auto_batch_size(per_image, max_batch)
    if solo and solo_pays(per_image):
        options = solo_options(config, settings)
        engines.solo = Engine(graph, options, engines.shared, engine.info.feature_name)
    if engines.shared is not None:
        engines.shared.release()  # every session exists
    if engine.info.io_binding:  # GPU: device buffers (and CUDA graphs) per batch bucket
        for e in engines.instances:
            e.prepare_buckets(bucket_sizes(max_batch), sample)
    if settings.warmup:
        sizes = list(range(1, max_batch + 1))
        for e in engines.all:
            e.warmup(sizes, sample)
    series = metrics.series(entry.name, str(entry.version))
    stats = ModelStats()
    delay_ms = config.max_queue_delay_ms
    if delay_ms is None:
        delay_ms = settings.max_queue_delay_ms
    timeout_ms = config.default_timeout_ms
    if timeout_ms is None:
        timeout_ms = settings.default_timeout_ms
    batcher = Batcher(
        [e.run for e in engines.instances],
        max_batch_size=max_batch,
        max_delay_s=delay_ms / 1000.0,
        max_queue_size=config.max_queue_size or settings.max_queue_size,
        preferred_batch_sizes=config.preferred_batch_sizes,
        priority_levels=config.priority_levels,
        default_priority_level=config.default_priority_level,
        on_batch=batch_recorder(stats, series),
        on_depth=series.queue_depth.set,
        name=entry.name,
        solo=engines.solo.run if engines.solo is not None else None,
        cores=cores if engine.info.provider == CPU else None,  # GPU batches leave the cores be
    )
    metrics.queue_capacity.labels(**series.labels).set(batcher.max_queue_size)
    return ServedModel(
        name=entry.name,
        version=entry.version,
        metadata=metadata,
        config=config,
        engines=engines,
        batcher=batcher,
        max_batch_size=max_batch,
        default_timeout_s=timeout_ms / 1000.0 if timeout_ms else None,
        fingerprint=(0, 0, 0),  # the caller's, taken before the files were read
        series=series,
        stats=stats,
        precision=precision,
        served_file=choice.path.name,
        variant_reason=choice.reason,
    )
