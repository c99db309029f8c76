"""Every Prometheus metric of the server, defined once, with few labels.

Labels: `model` and `version` (bounded by the repository), `code` (canonical status names).
A request for a model that does not exist is counted under model="" so that clients cannot
grow the label set.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# `*_created` series double the exposition for no use on a long-running server.
disable_created_metrics()

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
MV = ("model", "version")


class Metrics:
    """The server's metrics on their own registry (one per server, so tests can run many)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._series: dict[tuple[str, str], ModelSeries] = {}
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "imgclf_requests", "Requests by outcome (canonical status code).", (*MV, "code"),
            registry=r,
        )  # fmt: skip
        self.images = Counter("imgclf_images", "Images classified.", MV, registry=r)
        self.explained_images = Counter(
            "imgclf_explained_images", "Images answered with class activation maps.", MV,
            registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "imgclf_http_requests", "HTTP requests by route template and HTTP status.",
            ("route", "status"), registry=r,
        )  # fmt: skip
        self.failures = Counter(
            "imgclf_request_failures",
            "Failed requests by reason (invalid_input, undecodable_image, queue_full, ...).",
            (*MV, "reason"), registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "imgclf_request_duration_seconds",
            "End-to-end time of a request inside the server (decode, queue, inference, reply).",
            MV, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.preprocess_duration = Histogram(
            "imgclf_preprocess_duration_seconds",
            "Time to decode and preprocess one image.",
            MV, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_duration = Histogram(
            "imgclf_queue_duration_seconds",
            "Time an image waited in the batcher's queue.",
            MV, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_input_duration = Histogram(
            "imgclf_compute_input_duration_seconds",
            "Time to assemble one batch's input tensor.",
            MV, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_duration = Histogram(
            "imgclf_inference_duration_seconds",
            "Time of one ONNX Runtime run over a batch (compute infer).",
            MV, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_output_duration = Histogram(
            "imgclf_compute_output_duration_seconds",
            "Time to turn a request's model outputs into its reply (softmax, top-k).",
            MV, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.solo_batches = Counter(
            "imgclf_solo_batches",
            "Batches run on the solo session (every core), nothing else running or waiting.",
            MV, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "imgclf_batch_size", "Images per inference batch.", MV,
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "imgclf_queue_depth", "Images waiting in the batcher's queue.", MV, registry=r
        )
        self.queue_capacity = Gauge(
            "imgclf_queue_capacity",
            "Images the batcher's queue holds before refusing (max queue size).",
            MV, registry=r,
        )  # fmt: skip
        self.ready = Gauge(
            "imgclf_ready", "1 while the server reports SERVING (readiness), else 0.", registry=r
        )
        self.inflight = Gauge(
            "imgclf_inflight_requests", "Requests being served right now.", registry=r
        )
        self.model_info = Gauge(
            "imgclf_model_info",
            "1 for each loaded model version, labelled with the provider that runs it and the "
            "precision of the variant served (fp32, fp16, int8).",
            (*MV, "provider", "precision"), registry=r,
        )  # fmt: skip
        self.model_state = Gauge(
            "imgclf_model_state",
            "1 for the state each model version is in (LOADING, READY, UNAVAILABLE, FAILED).",
            (*MV, "state"), registry=r,
        )  # fmt: skip
        self.load_failures = Counter(
            "imgclf_model_load_failures", "Model versions that failed to load.", ("model",),
            registry=r,
        )  # fmt: skip
        self.model_load_duration = Gauge(
            "imgclf_model_load_duration_seconds",
            "Time to load and warm up a model version.",
            MV, registry=r,
        )  # fmt: skip
        self.model_memory = Gauge(
            "imgclf_model_memory_bytes",
            "Resident memory the process gained loading a model version (sessions, weights, "
            "warm-up; loads take turns).",
            MV, registry=r,
        )  # fmt: skip

    def series(self, model: str, version: str) -> ModelSeries:
        """One model version's series, looked up once (a label lookup costs more than the
        observation itself on the request path)."""
        key = (model, version)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = ModelSeries(self, {"model": model, "version": version})
        return found


class ModelSeries:
    """The per-request and per-batch series of one model version (model="" for requests
    that named no model the server knows). Each child is looked up on first use, so a series
    exists in the exposition only once something was counted in it, as before the cache."""

    def __init__(self, metrics: Metrics, labels: dict[str, str]) -> None:
        self._metrics = metrics
        self.labels = labels
        self._children: dict[tuple[str, str], Any] = {}

    def _child(self, name: str, **extra: str) -> Any:
        key = (name, *extra.values())
        child = self._children.get(key)
        if child is None:
            metric = getattr(self._metrics, name)
            child = self._children[key] = metric.labels(**self.labels, **extra)
        return child

    def requests(self, code: str) -> Any:
        return self._child("requests", code=code)

    def failures(self, reason: str) -> Any:
        return self._child("failures", reason=reason)

    @property
    def images(self) -> Any:
        return self._child("images")

    @property
    def explained_images(self) -> Any:
        return self._child("explained_images")

    @property
    def request_duration(self) -> Any:
        return self._child("request_duration")

    @property
    def preprocess_duration(self) -> Any:
        return self._child("preprocess_duration")

    @property
    def queue_duration(self) -> Any:
        return self._child("queue_duration")

    @property
    def compute_input_duration(self) -> Any:
        return self._child("compute_input_duration")

    @property
    def inference_duration(self) -> Any:
        return self._child("inference_duration")

    @property
    def compute_output_duration(self) -> Any:
        return self._child("compute_output_duration")

    @property
    def batch_size(self) -> Any:
        return self._child("batch_size")

    @property
    def queue_depth(self) -> Any:
        return self._child("queue_depth")

    @property
    def memory_bytes(self) -> Any:
        return self._child("model_memory")

    @property
    def solo_batches(self) -> Any:
        return self._child("solo_batches")
