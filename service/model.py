"""A loaded model version: its metadata, its ONNX Runtime engine and its batcher."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.batching import Batcher, BatchStats
from service.engine import Engine, softmax
from service.metrics import Metrics
from service.modelmeta import ModelMetadata
from service.repository import ModelEntry
from service.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    name: str
    version: int
    metadata: ModelMetadata
    engine: Engine
    batcher: Batcher
    max_batch_size: int
    executor: ThreadPoolExecutor

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        h, w = self.metadata.input_size
        return (3, h, w)

    def postprocess(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs (N, classes) -> probabilities (N, classes) float32."""
        outputs = outputs.astype(np.float32, copy=False)
        if self.metadata.output == "logits":
            return softmax(outputs)
        return outputs

    async def close(self) -> None:
        await self.batcher.close()
        self.executor.shutdown(wait=True)


def load_model(entry: ModelEntry, settings: ServerSettings, metrics: Metrics) -> ServedModel:
    """Open the ONNX file, read its metadata, check it, warm it up. Call from the event loop
    thread only for the final `batcher.start()` (done by the caller)."""
    started = time.monotonic()
    cfg = entry.read_config()
    providers = cfg.providers or settings.providers
    engine = Engine(
        entry.path,
        providers=providers,
        gpu_id=settings.gpu_id,
        intra_op_threads=settings.intra_op_threads,
    )
    metadata = ModelMetadata.from_props(engine.metadata_props, overrides=entry.read_sidecar())
    h, w = metadata.input_size
    engine.check_sample_shape((3, h, w))
    max_batch = cfg.max_batch_size or settings.max_batch_size
    batch_dim = engine.info.input_shape[0]
    if isinstance(batch_dim, int):
        if batch_dim != 1 and max_batch > batch_dim:
            raise ValueError(f"{entry.path}: fixed batch axis {batch_dim} < max_batch {max_batch}")
        max_batch = min(max_batch, batch_dim)
    if settings.warmup:
        engine.warmup(sorted({1, max_batch}), (3, h, w))
    labels = dict(model=entry.name, version=str(entry.version))

    def on_batch(stats: BatchStats) -> None:
        metrics.batch_size.labels(**labels).observe(stats.size)
        metrics.inference_duration.labels(**labels).observe(stats.inference_seconds)
        queue = metrics.queue_duration.labels(**labels)
        for seconds in stats.queue_seconds:
            queue.observe(seconds)

    def on_depth(depth: int) -> None:
        metrics.queue_depth.labels(**labels).set(depth)

    # One thread runs the engine: batches go through ONNX Runtime one at a time, each using
    # the intra-op thread pool.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{entry.name}")
    batcher = Batcher(
        engine.run,
        executor,
        max_batch_size=max_batch,
        max_delay_s=(
            cfg.max_queue_delay_ms
            if cfg.max_queue_delay_ms is not None
            else settings.max_queue_delay_ms
        )
        / 1000.0,
        max_queue_size=cfg.max_queue_size or settings.max_queue_size,
        on_batch=on_batch,
        on_depth=on_depth,
    )
    elapsed = time.monotonic() - started
    metrics.model_load_duration.labels(**labels).set(elapsed)
    metrics.model_info.labels(**labels, provider=engine.info.provider).set(1)
    log.info(
        "model %s version %s loaded in %.2fs: %d classes, input %dx%d, max batch %d, "
        "running on %s (%s)",
        entry.name, entry.version, elapsed, len(metadata.labels), h, w, max_batch,
        engine.info.provider, engine.info.reason,
    )  # fmt: skip
    return ServedModel(
        name=entry.name,
        version=entry.version,
        metadata=metadata,
        engine=engine,
        batcher=batcher,
        max_batch_size=max_batch,
        executor=executor,
    )
