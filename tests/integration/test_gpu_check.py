"""`python -m benchmarks.gpu_check run --cpu --short` for real: every step that needs no CUDA
runs (a real server on each bundled model, real photos, a real fine-tuning, export and
serving), the GPU-only ones are skipped with the reason, and the JSON and Markdown say so.
And the other way: on a machine without a GPU, the GPU run exits non-zero and says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import bundled_models

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def gpu_check(out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "run", str(out), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )  # fmt: skip


def rows(doc: dict, step: str) -> dict[str, dict]:
    return {r["name"]: r for r in doc["rows"] if r["step"] == step}


@pytest.mark.timeout(900)
def test_cpu_dry_run_runs_every_step_without_cuda_and_says_what_it_skipped(tmp_path: Path) -> None:
    proc = gpu_check(tmp_path, "--cpu", "--short", "--budget-s", "600", timeout=880)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["mode"] == "CPU dry run (--cpu)"
    assert not [r for r in doc["rows"] if r["status"] == "FAIL"]
    assert set(doc["step_seconds"]) == {
        "env", "providers", "parity", "engine", "limit", "served", "train"
    }  # fmt: skip

    providers = rows(doc, "providers")
    for model in bundled_models():
        for name in (f"{model}: load log line on CPUExecutionProvider",
                     f"{model}: imgclf_model_info{{provider}}"):  # fmt: skip
            assert providers[name]["status"] == "pass"
            assert providers[name]["value"] == "CPUExecutionProvider"
        assert rows(doc, "parity")[f"{model}: FP32 GPU vs CPU"]["status"] == "skip"
    assert providers["NVML gauges on /metrics"]["status"] == "skip"
    for name in ("IO binding per-bucket buffers", "CUDA graphs on/off", "TensorRT cache"):
        assert rows(doc, "engine")[name] == {
            "step": "engine", "name": name, "status": "skip", "value": "",
            "detail": "no CUDA (--cpu)",
        }  # fmt: skip

    served = doc["served"]
    assert {(p["input"], p["clients"]) for p in served} == {
        ("jpeg", 1), ("jpeg", 16), ("tensor", 1), ("tensor", 16)
    }  # fmt: skip
    for point in served:
        assert point["images_per_s"] > 0 and point["errors"] == {}
        assert sum(point["batches"].values()) > 0  # the batcher really formed batches
        assert point["busy_cores"]["event_loop"] >= 0

    train = doc["train"]
    assert train["cpu_images_per_s"] and all(r > 0 for r in train["cpu_images_per_s"])
    assert rows(doc, "train")["export with its parity gate"]["status"] == "pass"
    assert "parity" in train["export_log"]
    assert rows(doc, "train")["exported model served on CPUExecutionProvider"]["status"] == "pass"
    assert train["served_images_per_s"] > 0

    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (CPU dry run (--cpu))")
    assert "| engine | skip | TensorRT cache |  | no CUDA (--cpu) |" in md
    assert "0 failed" in md
    assert "export with its parity gate" in proc.stdout  # the table is printed as it goes


@pytest.mark.timeout(300)
def test_gpu_run_without_a_gpu_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    proc = gpu_check(tmp_path, "--steps", "providers", "--budget-s", "200", timeout=280)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED: providers:" in proc.stderr
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = [r for r in doc["rows"] if r["status"] == "FAIL"]
    assert failed and failed[0]["step"] == "providers"
    assert "| FAIL |" in (tmp_path / "gpu_check.md").read_text()
