"""The data plane: validate, look up the model, preprocess, batch, postprocess.

Transport-free: the gRPC servicers convert messages to these calls and map the domain errors
(service.errors) to status codes. Nothing here imports grpc.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import ImgclfError, InvalidInput, ModelNotFound, ModelNotReady
from service.imaging import preprocess_bytes
from service.metrics import Metrics
from service.model import ServedModel, load_model
from service.repository import scan
from service.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageInput:
    """One image of a request: encoded bytes, or a float32 tensor shaped like the model input."""

    encoded: bytes | None = None
    tensor: np.ndarray | None = None


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Classification:
    probabilities: np.ndarray
    top: list[ClassScore]


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    results: list[Classification]


def top_k(probabilities: np.ndarray, k: int, labels: list[str]) -> list[ClassScore]:
    """The k most probable classes, most probable first (ties: lower index first)."""
    k = min(k, probabilities.shape[0])
    idx = np.argsort(-probabilities, kind="stable")[:k]
    return [ClassScore(int(i), labels[i], float(probabilities[i])) for i in idx]


class Core:
    """Owns the loaded models and serves classification requests."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_workers, thread_name_prefix="preprocess"
        )
        self._draining = False
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready and not self._draining

    def load_all(self) -> None:
        """Load and warm up every model of the repository (blocking; run it off the loop).

        A model that fails to load is logged and skipped; the rest serve.
        """
        for entry in scan(self.settings.model_repository):
            try:
                self.models[entry.name] = load_model(entry, self.settings, self.metrics)
            except Exception as exc:
                log.error("model %s version %s failed to load: %s", entry.name, entry.version, exc)
        if not self.models:
            raise RuntimeError(f"no model could be loaded from {self.settings.model_repository}")

    def start(self) -> None:
        """Start the batchers (inside the running loop) and report ready."""
        for model in self.models.values():
            model.batcher.start()
        self._ready = True

    def begin_drain(self) -> None:
        """Refuse new requests with UNAVAILABLE; accepted ones go on."""
        self._draining = True

    async def close(self) -> None:
        """Finish every queued image, then stop the workers."""
        self._draining = True
        for model in self.models.values():
            await model.close()
        self._preprocess_pool.shutdown(wait=True)

    def get_model(self, name: str, version: int = 0) -> ServedModel:
        if not name:
            name = self.settings.default_model
        if not name:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise InvalidInput(f"name a model; loaded models: {', '.join(sorted(self.models))}")
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(
                f"model {name!r} is not loaded; loaded models: {', '.join(sorted(self.models))}"
            )
        if version and version != model.version:
            raise ModelNotFound(f"model {name!r} has no loaded version {version}")
        return model

    async def classify(
        self,
        model_name: str,
        images: list[ImageInput],
        top: int = 0,
        version: int = 0,
        deadline: float | None = None,
    ) -> ClassifyResult:
        """Classify images with one model. `deadline` is a time.monotonic() instant."""
        started = time.monotonic()
        labels = {"model": "", "version": ""}
        self.metrics.inflight.inc()
        try:
            if not self.ready:
                raise ModelNotReady("server is not ready (starting up or shutting down)")
            model = self.get_model(model_name, version)
            labels = {"model": model.name, "version": str(model.version)}
            k = self._check_request(model, images, top)
            rows = await self._run_all(model, images, deadline)
            probs = model.postprocess(np.stack(rows))
            names = model.metadata.labels
            result = ClassifyResult(
                model=model.name,
                version=model.version,
                results=[Classification(p, top_k(p, k, names)) for p in probs],
            )
        except ImgclfError as exc:
            self.metrics.requests.labels(**labels, code=exc.code).inc()
            raise
        except asyncio.CancelledError:
            self.metrics.requests.labels(**labels, code="CANCELLED").inc()
            raise
        except Exception:
            self.metrics.requests.labels(**labels, code="INTERNAL").inc()
            raise
        finally:
            self.metrics.inflight.dec()
        self.metrics.requests.labels(**labels, code="OK").inc()
        self.metrics.images.labels(**labels).inc(len(images))
        self.metrics.request_duration.labels(**labels).observe(time.monotonic() - started)
        return result

    def _check_request(self, model: ServedModel, images: list[ImageInput], top: int) -> int:
        s = self.settings
        if not images:
            raise InvalidInput("request carries no image")
        if len(images) > s.max_images_per_request:
            raise InvalidInput(
                f"request carries {len(images)} images, more than the limit of "
                f"{s.max_images_per_request}"
            )
        if top < 0 or top > s.max_top_k:
            raise InvalidInput(f"top_k must be between 0 and {s.max_top_k}, got {top}")
        for i, image in enumerate(images):
            if image.tensor is not None:
                try:
                    model.engine.check_sample_shape(tuple(image.tensor.shape))
                except InvalidInput as exc:
                    raise InvalidInput(f"image {i}: {exc}") from None
            elif image.encoded is None:
                raise InvalidInput(f"image {i} has neither encoded bytes nor a tensor")
        return top or s.default_top_k

    async def _run_all(
        self, model: ServedModel, images: list[ImageInput], deadline: float | None
    ) -> list[np.ndarray]:
        tasks = [asyncio.ensure_future(self._run_one(model, img, deadline)) for img in images]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise

    async def _run_one(
        self, model: ServedModel, image: ImageInput, deadline: float | None
    ) -> np.ndarray:
        tensor = image.tensor
        if tensor is None:
            assert image.encoded is not None
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            tensor = await loop.run_in_executor(
                self._preprocess_pool,
                preprocess_bytes,
                image.encoded,
                model.metadata.preprocessing,
                self.settings.max_pixels,
            )
            self.metrics.preprocess_duration.labels(
                model=model.name, version=str(model.version)
            ).observe(time.monotonic() - started)
        return await model.batcher.submit(tensor, deadline)
