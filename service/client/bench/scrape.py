"""The server's own view of a run: /metrics scraped before and after, and the deltas.

From imgclf's histograms (sums and counts, summed over the model's versions) we derive the
mean time per image of queueing and preprocessing, per batch of assembling the input and
running ONNX Runtime, per request of building the reply and of the whole request inside the
server, the mean batch size, and the cores the server process used. A server without
imgclf's metrics (Triton, ...) simply yields no breakdown.
"""

from __future__ import annotations

import math
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

STAGES = {
    # key: (histogram, denominator), denominator "count" (its own) or "images"
    "queue_ms_per_image": ("imgclf_queue_duration_seconds", "count"),
    "preprocess_ms_per_image": ("imgclf_preprocess_duration_seconds", "count"),
    "compute_input_ms_per_batch": ("imgclf_compute_input_duration_seconds", "count"),
    "inference_ms_per_batch": ("imgclf_inference_duration_seconds", "count"),
    "inference_ms_per_image": ("imgclf_inference_duration_seconds", "images"),
    "compute_output_ms_per_request": ("imgclf_compute_output_duration_seconds", "count"),
    "request_ms_per_request": ("imgclf_request_duration_seconds", "count"),
}


def parse(text: str) -> Samples:
    """Prometheus text exposition -> {(sample name, sorted labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def fetch(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return parse(reply.read().decode("utf-8", errors="replace"))


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def by_label(samples: Samples, name: str, key: str, **labels: str) -> dict[str, float]:
    """Sums of `name` grouped by the value of label `key`."""
    want = set(labels.items())
    out: dict[str, float] = {}
    for (n, lab), v in samples.items():
        if n == name and want <= set(lab):
            k = dict(lab).get(key, "")
            out[k] = out.get(k, 0.0) + v
    return out


def delta(before: Samples, after: Samples) -> Samples:
    """after - before, per series (a series missing before counts from 0)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _ratio(num: float, den: float, scale: float = 1.0) -> float | None:
    return num / den * scale if den > 0 and not math.isnan(num) else None


def breakdown(before: Samples, after: Samples, model: str, wall_s: float) -> dict[str, object]:
    """The server-side numbers of one run of `model` between two scrapes `wall_s` apart.

    Empty when the server exposes no imgclf metrics."""
    d = delta(before, after)
    if not any(name.startswith("imgclf_") for name, _ in d):
        return {}
    m = {"model": model}
    images = total(d, "imgclf_batch_size_sum", **m)
    batches = total(d, "imgclf_batch_size_count", **m)
    out: dict[str, object] = {}
    for key, (hist, den) in STAGES.items():
        seconds = total(d, f"{hist}_sum", **m)
        count = images if den == "images" else total(d, f"{hist}_count", **m)
        out[key] = _ratio(seconds, count, 1e3)
    out["mean_batch_size"] = _ratio(images, batches)
    out["batches"] = batches
    out["images"] = total(d, "imgclf_images_total", **m)
    out["requests_by_code"] = {
        code: n for code, n in sorted(by_label(d, "imgclf_requests_total", "code", **m).items())
        if n
    }  # fmt: skip
    out["failures_by_reason"] = {
        r: n
        for r, n in sorted(by_label(d, "imgclf_request_failures_total", "reason", **m).items())
        if n
    }
    cpu = total(d, "process_cpu_seconds_total")
    out["server_cpu_cores"] = _ratio(cpu, wall_s) if cpu else None
    return out
