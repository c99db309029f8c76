"""imgclf.metrics.gpu: the NVML collector and its registration, over a fake pynvml module."""

from __future__ import annotations

import logging
import sys
import types
from collections import Counter
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from imgclf.metrics.gpu import GpuCollector, register_gpu_metrics

FAMILIES = {
    "imgclf_gpu_utilization_ratio",
    "imgclf_gpu_memory_used_bytes",
    "imgclf_gpu_memory_total_bytes",
    "imgclf_gpu_power_watts",
}


class NVMLError(Exception):
    pass


def fake_nvml(gpus: list[dict], fail: set[tuple[str, int]] = frozenset(), init_error=None):
    """A pynvml stand-in. `gpus`: name, util (percent), used, total (bytes), mw (milliwatts).
    `fail`: (function name, gpu index) pairs that raise NVMLError."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    nvml.calls = Counter()

    def call(fn: str, index: int):
        nvml.calls[fn] += 1
        if (fn, index) in fail:
            raise NVMLError(f"{fn} not supported")
        return gpus[index]

    def init():
        nvml.calls["nvmlInit"] += 1
        if init_error is not None:
            raise init_error

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: nvml.calls.update(["nvmlShutdown"])
    nvml.nvmlDeviceGetCount = lambda: len(gpus)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: call("nvmlDeviceGetName", h)["name"]
    nvml.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(
        gpu=call("nvmlDeviceGetUtilizationRates", h)["util"], memory=0
    )

    def memory(h):
        g = call("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(used=g["used"], total=g["total"], free=g["total"] - g["used"])

    nvml.nvmlDeviceGetMemoryInfo = memory
    nvml.nvmlDeviceGetPowerUsage = lambda h: call("nvmlDeviceGetPowerUsage", h)["mw"]
    return nvml


H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "util": 75,
    "used": 3 << 30,
    "total": 80 << 30,
    "mw": 310_500,
}
T4 = {"name": b"Tesla T4", "util": 0, "used": 0, "total": 16 << 30, "mw": 27_000}


def samples(collector) -> dict[tuple[str, str, str], float]:
    """(metric, gpu, name) -> value, from one scrape."""
    families = list(collector.collect())
    assert {f.name for f in families} == FAMILIES
    return {
        (s.name, s.labels["gpu"], s.labels["name"]): s.value for f in families for s in f.samples
    }


def test_collector_reports_every_gpu():
    got = samples(GpuCollector(fake_nvml([H100, T4])))
    h100, t4 = ("0", H100["name"]), ("1", "Tesla T4")  # bytes names decoded
    assert got == {
        ("imgclf_gpu_utilization_ratio", *h100): 0.75,
        ("imgclf_gpu_memory_used_bytes", *h100): float(3 << 30),
        ("imgclf_gpu_memory_total_bytes", *h100): float(80 << 30),
        ("imgclf_gpu_power_watts", *h100): 310.5,
        ("imgclf_gpu_utilization_ratio", *t4): 0.0,
        ("imgclf_gpu_memory_used_bytes", *t4): 0.0,
        ("imgclf_gpu_memory_total_bytes", *t4): float(16 << 30),
        ("imgclf_gpu_power_watts", *t4): 27.0,
    }


def test_memory_is_read_once_per_gpu_and_scrape():
    nvml = fake_nvml([H100, T4])
    collector = GpuCollector(nvml)
    samples(collector)
    samples(collector)
    assert nvml.calls["nvmlDeviceGetMemoryInfo"] == 4


def test_a_failing_nvml_call_leaves_out_only_that_metric(caplog):
    nvml = fake_nvml([H100, T4], fail={("nvmlDeviceGetPowerUsage", 1)})
    collector = GpuCollector(nvml)
    with caplog.at_level(logging.DEBUG, logger="imgclf.metrics.gpu"):
        got = samples(collector)
    assert ("imgclf_gpu_power_watts", "1", "Tesla T4") not in got
    assert got[("imgclf_gpu_power_watts", "0", H100["name"])] == 310.5
    assert got[("imgclf_gpu_utilization_ratio", "1", "Tesla T4")] == 0.0
    assert len(got) == 7
    assert "no power for GPU 1" in caplog.text


def test_failing_memory_call_drops_both_memory_metrics():
    nvml = fake_nvml([H100], fail={("nvmlDeviceGetMemoryInfo", 0)})
    got = samples(GpuCollector(nvml))
    assert {k[0] for k in got} == {"imgclf_gpu_utilization_ratio", "imgclf_gpu_power_watts"}


def test_describe_does_not_touch_nvml():
    nvml = fake_nvml([H100])
    collector = GpuCollector(nvml)
    before = sum(nvml.calls.values())
    assert {f.name for f in collector.describe()} == FAMILIES
    assert all(not f.samples for f in collector.describe())
    assert sum(nvml.calls.values()) == before


# --- register_gpu_metrics -------------------------------------------------------------------


def test_register_with_gpus(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([H100, T4]))
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="imgclf.metrics.gpu"):
        assert register_gpu_metrics(registry) is True
    text = generate_latest(registry).decode()
    assert 'imgclf_gpu_power_watts{gpu="1",name="Tesla T4"} 27.0' in text
    assert 'imgclf_gpu_utilization_ratio{gpu="0",name="NVIDIA H100 80GB HBM3"} 0.75' in text
    assert "GPU metrics for 2 GPU(s)" in caplog.text


def test_no_pynvml_registers_nothing(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="imgclf.metrics.gpu"):
        assert register_gpu_metrics(registry) is False
    assert generate_latest(registry) == b""
    assert [r.message for r in caplog.records] == [
        "no GPU metrics: pynvml is not installed (pip install nvidia-ml-py)"
    ]


def test_nvml_init_failure_registers_nothing(monkeypatch, caplog):
    nvml = fake_nvml([H100], init_error=NVMLError("Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="imgclf.metrics.gpu"):
        assert register_gpu_metrics(registry) is False
    assert generate_latest(registry) == b""
    assert len(caplog.records) == 1
    assert "NVML did not initialise (Driver Not Loaded)" in caplog.text


def test_no_gpu_registers_nothing_and_shuts_nvml_down(monkeypatch, caplog):
    nvml = fake_nvml([])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="imgclf.metrics.gpu"):
        assert register_gpu_metrics(registry) is False
    assert generate_latest(registry) == b""
    assert nvml.calls["nvmlShutdown"] == 1
    assert "NVML sees no GPU" in caplog.text


def test_listing_failure_registers_nothing(monkeypatch):
    nvml = fake_nvml([H100], fail={("nvmlDeviceGetName", 0)})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry) is False
    assert nvml.calls["nvmlShutdown"] == 1


def test_registering_twice_on_one_registry_clashes(monkeypatch):
    # describe() gives the names, so the registry catches the clash at registration.
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([H100]))
    registry = CollectorRegistry()
    assert register_gpu_metrics(registry) is True
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register_gpu_metrics(registry)
