"""GPU metrics from NVML (package nvidia-ml-py, module `pynvml`), as a Prometheus collector.

Optional: without pynvml, without a driver or without a GPU the server runs with no GPU
metrics and says so in one log line. The collector reads NVML at each scrape; a metric that
NVML fails to give (e.g. power on a GPU that does not report it) is left out of that scrape,
never failing it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LABELS = ("gpu", "name")


def _families() -> dict[str, GaugeMetricFamily]:
    return {
        "utilization": GaugeMetricFamily(
            "imgclf_gpu_utilization_ratio",
            "Fraction of the last sample period during which the GPU ran a kernel (0..1).",
            labels=LABELS,
        ),
        "memory_used": GaugeMetricFamily(
            "imgclf_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=LABELS
        ),
        "memory_total": GaugeMetricFamily(
            "imgclf_gpu_memory_total_bytes", "GPU memory installed.", labels=LABELS
        ),
        "power": GaugeMetricFamily("imgclf_gpu_power_watts", "GPU power draw.", labels=LABELS),
    }


class GpuCollector(Collector):
    """Per-GPU utilisation, memory and power, labelled with the GPU's index and name.

    `nvml` is the pynvml module, already initialised (nvmlInit).
    """

    def __init__(self, nvml: ModuleType) -> None:
        self._nvml = nvml
        self.devices: list[tuple[str, str, Any]] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # older pynvml
                name = name.decode(errors="replace")
            self.devices.append((str(index), name, handle))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only, so registering checks for clashes without touching NVML.
        yield from _families().values()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = _families()
        for index, name, handle in self.devices:
            for key, read in self._readings(handle):
                try:
                    value = read()
                except Exception as e:  # a failed NVML call must not fail the whole scrape
                    log.debug("NVML: no %s for GPU %s: %s", key, index, e)
                    continue
                families[key].add_metric([index, name], value)
        yield from families.values()

    def _readings(self, handle: Any) -> list[tuple[str, Callable[[], float]]]:
        nvml = self._nvml
        memory = functools.cache(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))  # one call
        return [
            ("utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100),
            ("memory_used", lambda: float(memory().used)),
            ("memory_total", lambda: float(memory().total)),
            ("power", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000),  # mW -> W
        ]


def register_gpu_metrics(registry: CollectorRegistry) -> bool:
    """Register a GpuCollector when NVML works and sees a GPU; otherwise register nothing,
    log why in one line and return False."""
    try:
        import pynvml  # optional dependency, imported only here
    except ImportError:
        log.info("no GPU metrics: pynvml is not installed (pip install nvidia-ml-py)")
        return False
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        log.info("no GPU metrics: NVML did not initialise (%s)", e)
        return False
    try:
        collector = GpuCollector(pynvml)
    except Exception as e:
        log.info("no GPU metrics: NVML failed to list the GPUs (%s)", e)
        _shutdown(pynvml)
        return False
    if not collector.devices:
        log.info("no GPU metrics: NVML sees no GPU")
        _shutdown(pynvml)
        return False
    registry.register(collector)
    log.info(
        "GPU metrics for %d GPU(s): %s",
        len(collector.devices),
        ", ".join(f"{i} {n}" for i, n, _ in collector.devices),
    )
    return True


def _shutdown(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as e:
        log.debug("nvmlShutdown failed: %s", e)
