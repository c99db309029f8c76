"""A loaded model version: metadata, ONNX Runtime instances, batcher, statistics.

`load_model` is blocking (file reads, session creation, warm-up): the manager runs it off
the event loop. `ServedModel.start` and `retire` run on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.metrics.prometheus import Metrics, ModelSeries
from imgclf.metrics.statistics import ModelStats
from imgclf.modelmeta import ModelMetadata
from imgclf.models.repository import ModelConfig, ModelEntry
from imgclf.runtime.batcher import Batcher, BatchStats
from imgclf.runtime.buckets import bucket_sizes
from imgclf.runtime.cores import Cores
from imgclf.runtime.cpuquota import cpus
from imgclf.runtime.engine import CPU, Engine, ExecutionOptions, choose_providers, softmax
from imgclf.settings import ServerSettings
from imgclf.variants import Choice, choose_variant

log = logging.getLogger(__name__)

PROVIDER_OF_KIND = {"cpu": "cpu", "gpu": "cuda"}


@dataclass
class Engines:
    """A model version's ONNX Runtime sessions."""

    instances: list[Engine]
    """One batch at a time each."""
    solo: Engine | None = None
    """CPU only: a session over every core for a batch that is all the work there is."""

    @property
    def all(self) -> list[Engine]:
        return self.instances + ([self.solo] if self.solo is not None else [])


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
    """The variant served: fp32, fp16 or int8 (imgclf.variants)."""
    served_file: str = "model.onnx"
    """The file of the version folder that runs (model.onnx or model.int8.onnx)."""
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
        cuda_graphs=settings.cuda_graphs if config.cuda_graphs is None else config.cuda_graphs,
        **extra,
    )


def create_engines(path: Path, config: ModelConfig, settings: ServerSettings) -> Engines:
    """The model's instances (the solo session comes later in load_model: see `wants_solo`).

    Configured (`instances` N): N sessions, the cores divided among them. Auto: on a GPU one
    session; on CPU one single-threaded session per core, which the limit measurements show
    gives the most images per second under concurrent load (docs/performance.md). (A GPU
    session's CPU threads only run the few nodes left on the CPU.)"""
    count = config.instances or settings.instances
    first = Engine(path, execution_options(config, settings, 0, count or cpus()))
    if not count:
        count = cpus() if first.info.provider == CPU else 1
    rest = [Engine(path, execution_options(config, settings, i, count)) for i in range(1, count)]
    return Engines([first, *rest])


def solo_options(config: ModelConfig, settings: ServerSettings) -> ExecutionOptions:
    """The solo session's options: one intra-op thread per core, spinning as configured."""
    options = execution_options(config, settings, 0, 1)
    return dataclasses.replace(
        options,
        intra_op_threads=cpus(),
        allow_spinning=options.allow_spinning or settings.solo_spinning,
    )


AUTO_MAX_BATCH = 8
SLOW_MODEL_MAX_BATCH = 4
"""On CPU, the auto max batch size of a model that takes BATCHING_PAYS_BELOW_S or more per
image (see auto_batch_size)."""
BATCHING_PAYS_BELOW_S = 0.005
"""On CPU: below this time per image, per-call overhead dominates a run. Batches amortise it;
intra-op threads (the solo session) do not pay, and their spinning costs the cores more than
it saves."""


def seconds_per_image(engine: Engine, sample_shape: tuple[int, ...]) -> float:
    """The best of 5 timed single-image runs (after one untimed)."""
    batch = np.zeros((1, *sample_shape), dtype=np.float32)
    engine.run(batch)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        engine.run(batch)
        best = min(best, time.perf_counter() - started)
    return best


def auto_batch_size(per_image: float | None, limit: int) -> int:
    """The max batch size when none is configured, from the CPU seconds per image (None on a
    GPU, where batches pay: `limit`). A model that takes well under a few milliseconds per
    image is dominated by per-call overhead, which batches amortise: `limit`. A slower one
    gains little: measured for EfficientNet-Lite0 on 2 cores, batches of 4 on a
    single-threaded session cost from 12 % more to 8 % less per image than single images in
    the limit, and served 1-18 % more images/s at 16 clients in four side-by-side runs. With
    no queue delay a batch only forms from images already waiting, so a lone request never
    waits for one: SLOW_MODEL_MAX_BATCH."""
    if per_image is None or per_image < BATCHING_PAYS_BELOW_S:
        return limit
    return min(limit, SLOW_MODEL_MAX_BATCH)


def wants_solo(engines: Engines, settings: ServerSettings) -> bool:
    """Whether a solo session could pay: on CPU with more than one core, unless an instance
    already spans every core. It is then added for models slow enough that intra-op threads
    pay (BATCHING_PAYS_BELOW_S per image or more on one instance); it runs a request that
    arrives alone at the latency of every core."""
    engine = engines.instances[0]
    return (
        settings.solo_session
        and engine.info.provider == CPU
        and engine.options.intra_op_threads < cpus()
    )


def describe_buckets(engine: Engine) -> str:
    """For the load log line: the batch buckets and whether CUDA graphs replay them."""
    if not engine.buckets:
        return ""
    graphs = "CUDA graphs" if engine.info.cuda_graphs else "no CUDA graphs"
    return f"; IO binding, batch buckets {','.join(map(str, engine.buckets))} ({graphs})"


def served_variant(entry: ModelEntry, config: ModelConfig, settings: ServerSettings) -> Choice:
    """Which file of the version folder to serve, for the provider the first instance will
    request (imgclf.variants)."""
    requested, _ = choose_providers(execution_options(config, settings, 0, 1))
    first = requested[0] if isinstance(requested[0], str) else requested[0][0]
    return choose_variant(entry.path.parent, config.precision, first)


def variant_precision(choice: Choice, input_type: str) -> str:
    if choice.variant == "int8":
        return "int8"
    return "fp16" if input_type == "tensor(float16)" else "fp32"


def describe_gate(provenance: dict) -> str:
    """For the load log line: an INT8 model's calibration and measured accuracies."""
    gate, calibration = provenance.get("accuracy_gate"), provenance.get("calibration")
    if not isinstance(gate, dict) or not isinstance(calibration, dict):
        return ""
    text = (
        f"calibrated {calibration.get('method')} on {calibration.get('images')} images "
        f"(seed {calibration.get('seed')}), gate on {gate.get('images')} images: "
        f"top-1 agreement {gate.get('agreement', float('nan')):.2f} %"
    )
    if gate.get("float_accuracy") is not None:
        text += (
            f", top-1 {gate['float_accuracy']:.2f} % float -> {gate['int8_accuracy']:.2f} % int8"
        )
    return text


def load_model(
    entry: ModelEntry,
    config: ModelConfig,
    settings: ServerSettings,
    metrics: Metrics,
    cores: Cores | None = None,
) -> ServedModel:
    """Open the ONNX file, read and check its metadata, create its instances, warm them up."""
    started = time.monotonic()
    fingerprint = entry.fingerprint()
    choice = served_variant(entry, config, settings)
    engines = create_engines(choice.path, config, settings)
    engine = engines.instances[0]
    metadata = ModelMetadata.from_props(engine.metadata_props, overrides=entry.read_sidecar())
    precision = variant_precision(choice, engine.info.input_type)
    h, w = metadata.input_size
    sample = metadata.sample_shape
    if metadata.pixel_input != (engine.info.input_type == "tensor(uint8)"):
        raise ValueError(
            f"{entry.path}: input {engine.info.input_type} with layout {metadata.input_layout}; "
            "a uint8 input takes NHWC pixels (input_layout NHWC, normalisation in the graph), "
            "a float input NCHW tensors"
        )
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
    auto_batch = not (config.max_batch_size or settings.max_batch_size)
    solo = wants_solo(engines, settings)
    per_image = None
    if engine.info.provider == CPU and (auto_batch or solo):
        per_image = seconds_per_image(engine, sample)
    if auto_batch:
        max_batch = auto_batch_size(per_image, max_batch)
    if solo and per_image is not None and per_image >= BATCHING_PAYS_BELOW_S:
        engines.solo = Engine(choice.path, solo_options(config, settings))
    if engine.info.io_binding:  # GPU: device buffers (and CUDA graphs) per batch bucket
        for e in engines.instances:
            e.prepare_buckets(bucket_sizes(max_batch), sample)
    if settings.warmup:
        sizes = list(range(1, max_batch + 1))
        for e in engines.all:
            e.warmup(sizes, sample)
    series = metrics.series(entry.name, str(entry.version))
    stats = ModelStats()

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
        on_batch=on_batch,
        on_depth=series.queue_depth.set,
        name=entry.name,
        solo=engines.solo.run if engines.solo is not None else None,
        cores=cores if engine.info.provider == CPU else None,  # GPU batches leave the cores be
    )
    metrics.queue_capacity.labels(**series.labels).set(batcher.max_queue_size)
    elapsed = time.monotonic() - started
    metrics.model_load_duration.labels(**series.labels).set(elapsed)
    log.info(
        "model %s version %s loaded in %.2fs: %d classes, input %dx%d, max batch %d, "
        "%d instance(s) x %d intra-op thread(s)%s, precision %s (%s: %s) on %s (%s)%s",
        entry.name, entry.version, elapsed, len(metadata.labels), h, w, max_batch,
        len(engines.instances), engine.options.intra_op_threads,
        f" + solo session x {engines.solo.options.intra_op_threads}" if engines.solo else "",
        precision, choice.path.name, choice.reason,
        engine.info.provider, engine.info.reason, describe_buckets(engine),
    )  # fmt: skip
    if gate := describe_gate(metadata.provenance):
        log.info("model %s version %s %s: %s", entry.name, entry.version, precision, gate)
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
        series=series,
        stats=stats,
        precision=precision,
        served_file=choice.path.name,
    )
