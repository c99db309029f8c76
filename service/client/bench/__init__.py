"""`imgclf bench`: a load generator for imgclf (and any Open Inference Protocol server) that
reports served throughput and latency next to the machine's own limit on the same inputs.

Modules: cli (flags, the run), load (grpc.aio client processes), limit (the no-server limit),
inputs (photos, tensors, model preprocessing), stats (records, percentiles, schedules),
scrape (the server's /metrics deltas), report (tables, JSON, plot), server (--start-server).
The photos need scikit-image and scikit-learn, the plot matplotlib: pip install 'imgclf[bench]'.
"""

from __future__ import annotations

BENCH_EXTRA = "pip install 'imgclf[bench]'"
IMAGE_SIZES = {
    "0.3mp": (640, 480),
    "1mp": (1152, 864),
    "3mp": (2048, 1536),
    "12mp": (4000, 3000),
}
"""Named photo sizes, (width, height), all 4:3 like most camera sensors."""


class MissingDependency(RuntimeError):
    """An optional package the benchmark needs is not installed."""
