"""The data plane: look up the model, validate, preprocess, batch, postprocess, account.

Transport-free: the gRPC servicers convert messages to these calls and map the domain errors
(imgclf.errors) to status codes. Nothing here imports grpc.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from imgclf.budget import MemoryBudget
from imgclf.errors import DeadlineExceeded, ImgclfError, InvalidInput, ModelNotReady
from imgclf.explain import (
    NO_EXPLAIN,
    ExplainRequest,
    Explanation,
    Probe,
    check_explain,
    explanations,
)
from imgclf.imaging import normalize, pixels_from_bytes, preprocess_bytes
from imgclf.inputs import ImageInput, check_count, check_images
from imgclf.metrics.prometheus import Metrics, ModelSeries
from imgclf.models.loader import ServedModel
from imgclf.models.manager import ModelManager
from imgclf.runtime.batcher import Admission
from imgclf.runtime.osthreads import name_this_thread
from imgclf.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Classification:
    probabilities: np.ndarray
    top: list[ClassScore]
    explanation: Explanation | None = None


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int
    results: list[Classification]


@dataclass(frozen=True)
class InferResult:
    model: ServedModel
    outputs: np.ndarray
    """The model's raw output rows (N, classes)."""
    probabilities: np.ndarray
    """Softmax of logits, or the outputs themselves for probability models."""
    explanations: list[Explanation] | None = None


T = TypeVar("T")

Images = Sequence[ImageInput] | Callable[[ServedModel], Sequence[ImageInput]]
"""A request's images, or how to convert them once the model is known."""


def top_k(probabilities: np.ndarray, k: int, labels: list[str]) -> list[ClassScore]:
    """The k most probable classes, most probable first (ties: lower index first)."""
    n = probabilities.shape[0]
    k = min(k, n)
    candidates = None
    if k < n:  # only the classes at or above the k-th largest value need sorting
        kth = np.partition(probabilities, n - k)[n - k]
        candidates = np.flatnonzero(probabilities >= kth)
        if len(candidates) < k:  # NaN in the way: sort everything
            candidates = None
    if candidates is None:
        candidates = np.arange(n)
    order = np.argsort(-probabilities[candidates], kind="stable")[:k]
    return [ClassScore(int(i), labels[i], float(probabilities[i])) for i in candidates[order]]


DEADLINE_SLACK = 0.2
"""See `deadline_passed`."""


def deadline_passed(deadline: float | None, started: float, now: float) -> bool:
    """Whether a call cancelled at `now` ended by its deadline (the client saw
    DEADLINE_EXCEEDED) rather than by the client's own cancel. The wire does not say: both
    arrive as the same HTTP/2 reset, sent when the client's deadline passes, which was
    earlier than ours by the time the request took to reach us (measured up to ~0.1 s of a
    0.5 s deadline on a loaded machine). A cancel within the last DEADLINE_SLACK of the
    time the call had when it reached us counts as its deadline."""
    if deadline is None:
        return False
    return deadline - now <= DEADLINE_SLACK * max(0.0, deadline - started)


class Core:
    """Serves classification and inference requests over the manager's loaded models."""

    def __init__(self, settings: ServerSettings, metrics: Metrics, manager: ModelManager) -> None:
        self.settings = settings
        self.metrics = metrics
        self.manager = manager
        self.memory = MemoryBudget(settings.memory_budget_bytes)
        """Bytes in flight: request messages (service/grpc/budget.py) and decodes."""
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_workers,
            thread_name_prefix="preprocess",
            initializer=lambda: name_this_thread(threading.current_thread().name),
        )
        self._unknown = metrics.series("", "")
        """Requests that named no model the server serves."""
        self._started = False
        self._draining = False
        self._closed = False

    @property
    def ready(self) -> bool:
        """Started, not draining, and every model that should serve has a ready version."""
        return self._started and not self._draining and self.manager.all_ready()

    def mark_started(self) -> None:
        self._started = True

    def begin_drain(self) -> None:
        """Readiness off: load balancers stop routing here. Requests are still served."""
        self._draining = True

    async def close(self) -> None:
        """Finish every queued image, then stop the workers."""
        self._draining = self._closed = True
        await self.manager.close()
        self._preprocess_pool.shutdown(wait=True)

    async def classify(
        self,
        model_name: str,
        images: Images,
        top: int = 0,
        version: int = 0,
        deadline: float | None = None,
        priority: int = 0,
        count: int | None = None,
        explain: ExplainRequest | None = None,
    ) -> ClassifyResult:
        """Classify images with one model: probabilities and the top-k labels per image, and
        with `explain` the class activation maps of the classes it asks for."""

        def check_top(_model: ServedModel | None = None) -> int:
            if top < 0 or top > self.settings.max_top_k:
                raise InvalidInput(
                    f"top_k must be between 0 and {self.settings.max_top_k}, got {top}",
                    reason="bad_top_k",
                )
            return top or self.settings.default_top_k

        def finish(model: ServedModel, outputs: np.ndarray, probes: list[Probe]) -> ClassifyResult:
            k = check_top()
            probs = model.probabilities(outputs)
            names = model.metadata.labels
            maps = (
                explanations(model, probs, probes, explain_request)
                if probes
                else [None] * len(probs)
            )
            return ClassifyResult(
                model=model.name,
                version=model.version,
                results=[
                    Classification(p, top_k(p, k, names), m)
                    for p, m in zip(probs, maps, strict=True)
                ],
            )

        explain_request = explain or NO_EXPLAIN
        return await self._serve(
            model_name, version, images, deadline, priority, finish, check=check_top, count=count,
            explain=explain_request,
        )  # fmt: skip

    async def infer(
        self,
        model_name: str,
        images: Images,
        version: int = 0,
        deadline: float | None = None,
        priority: int = 0,
        check: Callable[[ServedModel], object] | None = None,
        explain: ExplainRequest | None = None,
    ) -> InferResult:
        """Run images through one model: raw outputs and probabilities (Open Inference), and
        with `explain` class activation maps. `check` validates the rest of the request
        against the model before any work."""

        def finish(model: ServedModel, outputs: np.ndarray, probes: list[Probe]) -> InferResult:
            probs = model.probabilities(outputs)
            maps = explanations(model, probs, probes, explain_request) if probes else None
            return InferResult(model, outputs, probs, maps)

        explain_request = explain or NO_EXPLAIN
        return await self._serve(
            model_name, version, images, deadline, priority, finish, check=check,
            explain=explain_request,
        )  # fmt: skip

    def reject(self, error: ImgclfError) -> None:
        """Count a request refused before it named a model the core could look up (e.g. a
        malformed version or parameter), so that every refusal shows in the metrics."""
        self._account(None, self._unknown, time.monotonic(), error.code, error.reason)

    async def _serve(
        self,
        model_name: str,
        version: int,
        images: Images,
        deadline: float | None,
        priority: int,
        finish: Callable[[ServedModel, np.ndarray, list[Probe]], T],
        check: Callable[[ServedModel], object] | None = None,
        count: int | None = None,
        explain: ExplainRequest = NO_EXPLAIN,
    ) -> T:
        """Look up, convert, validate, admit, run and account for one request: every outcome,
        the conversion's and validation's errors included, is counted. `check` validates the
        request against the model first; `count`, when known before conversion, is checked
        against the limits before any image is converted."""
        started = time.monotonic()
        series = self._unknown
        model: ServedModel | None = None
        self.metrics.inflight.inc()
        try:
            if self._closed or not self._started:
                raise ModelNotReady("server is not ready (starting up or shutting down)")
            model = self.manager.get(model_name, version)
            series = model.series
            with model.use():
                if check is not None:
                    check(model)
                check_explain(model, explain, self.settings.max_explain_classes)
                if count is not None:
                    check_count(count, self.settings.max_images_per_request)
                if callable(images):
                    images = images(model)
                check_images(model, images, self.settings.max_images_per_request)
                if deadline is None and model.default_timeout_s:
                    deadline = started + model.default_timeout_s
                try:
                    level = model.batcher.level_of(priority)
                except ValueError as exc:
                    raise InvalidInput(str(exc), reason="bad_priority") from None
                # Refused before decoding: beyond the queue bound, or when the deadline cannot
                # be met behind the work already waiting.
                probes = [Probe() for _ in images] if explain.wanted else []
                with model.batcher.admit(len(images), deadline) as admission:
                    rows = await self._run_all(model, images, deadline, level, admission, probes)
                out_started = time.monotonic()
                result = finish(model, np.stack(rows), probes)
                out_seconds = time.monotonic() - out_started
        except ImgclfError as exc:
            self._account(model, series, started, exc.code, exc.reason)
            raise
        except asyncio.CancelledError:
            if deadline_passed(deadline, started, time.monotonic()):
                self._account(model, series, started, "DEADLINE_EXCEEDED", "deadline_exceeded")
            else:
                self._account(model, series, started, "CANCELLED", "cancelled")
            raise
        except Exception:
            self._account(model, series, started, "INTERNAL", "internal")
            raise
        finally:
            self.metrics.inflight.dec()
        series.compute_output_duration.observe(out_seconds)
        model.stats.record_output(out_seconds, len(images))
        series.images.inc(len(images))
        if probes:
            series.explained_images.inc(len(images))
        self._account(model, series, started, "OK", None)
        return result

    def _account(
        self,
        model: ServedModel | None,
        series: ModelSeries,
        started: float,
        code: str,
        reason: str | None,
    ) -> None:
        seconds = time.monotonic() - started
        series.requests(code).inc()
        if reason is not None:
            series.failures(reason).inc()
        else:
            series.request_duration.observe(seconds)
        if model is not None:
            model.stats.record_request(seconds, ok=reason is None)

    async def _run_all(
        self,
        model: ServedModel,
        images: Sequence[ImageInput],
        deadline: float | None,
        level: int,
        admission: Admission,
        probes: list[Probe],
    ) -> list[np.ndarray]:
        """Every image's output row; an image with a probe (explained) leaves its features
        and sizes in it."""
        if len(images) == 1:  # the common case: no task per image
            probe = probes[0] if probes else None
            return [await self._run_one(model, images[0], deadline, level, admission, probe)]
        tasks = [
            asyncio.ensure_future(
                self._run_one(model, img, deadline, level, admission, probes[i] if probes else None)
            )
            for i, img in enumerate(images)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise

    async def _run_one(
        self,
        model: ServedModel,
        image: ImageInput,
        deadline: float | None,
        level: int,
        admission: Admission,
        probe: Probe | None = None,
    ) -> np.ndarray:
        spec = model.metadata.preprocessing
        features = probe.take_features if probe is not None else None
        if image.tensor is not None:
            tensor = image.tensor
        elif image.pixels is not None:
            pixels = image.pixels
            tensor = (
                pixels if model.metadata.pixel_input else normalize(pixels.transpose(1, 2, 0), spec)
            )
        else:
            assert image.encoded is not None
            s = self.settings
            sizes = probe.sizes if probe is not None else None
            args = (image.encoded, spec, s.max_pixels, s.jpeg_draft, self.memory, sizes)
            # Always off the event loop: even a few hundred bytes may declare millions of pixels.
            convert = pixels_from_bytes if model.metadata.pixel_input else preprocess_bytes
            if model.decodes_in_workers:  # by the worker that runs it (imgclf.runtime.batcher)
                decode = functools.partial(convert, *args)
                return await model.batcher.submit(decode, deadline, level, admission, features)
            started = time.monotonic()
            if deadline is not None and started >= deadline:  # no decoding for nobody
                raise DeadlineExceeded("deadline passed before decoding")
            loop = asyncio.get_running_loop()
            cores = self.manager.cores
            cores.note(+1)  # a decode is CPU work: no solo run meanwhile
            try:
                tensor = await loop.run_in_executor(self._preprocess_pool, convert, *args)
            finally:
                cores.note(-1)
            model.series.preprocess_duration.observe(time.monotonic() - started)
        return await model.batcher.submit(tensor, deadline, level, admission, features)
