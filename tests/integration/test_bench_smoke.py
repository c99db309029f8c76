"""`python -m imgclf.client.bench` for real, briefly, against a real server on the tiny model: every
input kind through both APIs, and the --start-server --limit path. No timed assertions: only
that requests flowed (throughput > 0) and none failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.client.bench.launcher import ServerProcess
from tests.tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--duration", "1", "--warmup", "0.5"]
ONE_ROUND = ["--rounds", "1"]  # imgclf bench runs 3 by default


def bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.client.bench", "--model", "tiny", *SHORT, *ONE_ROUND, *args,
         "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "served:" in proc.stdout
    return json.loads(out.read_text())


def assert_served_cleanly(result: dict, points: int) -> None:
    assert len(result["points"]) == points
    for p in result["points"]:
        s = p["summary"]
        assert s["throughput_rps"] > 0 and s["throughput_ips"] > 0
        assert s["errors"] == {} and s["ok"] == s["requests"] > 0
        assert s["latency_ms"]["p50"] > 0


@pytest.mark.parametrize("api", ["imgclf", "oip"])
@pytest.mark.parametrize("kind", ["tensor", "jpeg"])
def test_bench_against_a_running_server(
    tiny_server: ServerProcess, tiny_repo: Path, tmp_path: Path, api: str, kind: str
) -> None:
    args = ["--target", tiny_server.target, "--metrics-url", tiny_server.metrics_url,
            "--api", api, "--input", kind, "--concurrency", "2"]  # fmt: skip
    if api == "oip":  # the oip runs take their preprocessing from the file, imgclf's from
        args += ["--model-path", str(tiny_repo / "tiny" / "1" / "model.onnx")]  # ListModels
    result = bench(tmp_path, *args)
    assert_served_cleanly(result, 1)
    assert result["model"]["input_shape"] == [3, 16, 16]
    server = result["points"][0]["server"]
    assert server["images"] > 0 and server["mean_batch_size"] >= 1
    assert server["requests_by_code"].keys() == {"OK"}


def test_bench_open_loop_with_two_client_processes(
    tiny_server: ServerProcess, tmp_path: Path
) -> None:
    result = bench(
        tmp_path, "--target", tiny_server.target, "--metrics-url", "", "--input", "tensor",
        "--rate", "40", "--arrival", "poisson", "--client-processes", "2",
    )  # fmt: skip
    assert_served_cleanly(result, 1)
    assert result["points"][0]["kind"] == "open" and result["points"][0]["server"] == {}


def test_bench_starts_its_own_server_and_compares_with_the_limit(
    tiny_repo: Path, tmp_path: Path
) -> None:
    result = bench(
        tmp_path, "--start-server", "--model-repository", str(tiny_repo), "--input", "jpeg",
        "--concurrency", "2", "--limit", "--limit-duration", "0.5", "--limit-batch", "1",
        "--plot", str(tmp_path / "bench.png"),
    )  # fmt: skip
    assert_served_cleanly(result, 1)
    assert result["server_exit_code"] == 0
    lim = result["limit"]
    assert lim["images_per_s"] > 0 and lim["p50_ms"] > 0
    assert {c["config"] for c in lim["configs"]} >= {"b/1", "b+spin/1"}
    assert result["points"][0]["vs_limit"]["served_over_limit"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bench_floor_drives_a_bare_grpc_server_with_the_same_requests(
    tiny_server: ServerProcess, tmp_path: Path
) -> None:
    result = bench(
        tmp_path, "--target", tiny_server.target, "--metrics-url", "", "--input", "tensor",
        "--concurrency", "2", "--floor", "--rounds", "2",
    )  # fmt: skip
    assert_served_cleanly(result, 1)
    floor = result["points"][0]["floor"]
    assert floor["throughput_rps"] > 0 and floor["errors"] == 0
    assert floor["served_over_floor"] > 0 and floor["p50_ms"] > 0


def test_bench_says_what_failed(tiny_server: ServerProcess, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.client.bench", "--target", tiny_server.target,
         "--model", "no-such-model", "--input", "jpeg", *SHORT],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "probe request failed: NOT_FOUND" in proc.stderr


@pytest.mark.parametrize("api", ["imgclf", "oip"])
def test_bench_drives_a_pixel_input_model(tmp_path: Path, api: str) -> None:
    """A model with uint8 NHWC input (normalisation in its graph): the bench sends UINT8
    pixels [H, W, 3] through either API and feeds the same pixels to the limit."""
    make_tiny_model(tmp_path / "repo" / "tiny" / "1" / "model.onnx", pixel_input=True)
    result = bench(
        tmp_path, "--start-server", "--model-repository", str(tmp_path / "repo"), "--api", api,
        "--input", "tensor", "--concurrency", "2", "--limit", "--limit-duration", "0.5",
        "--limit-batch", "1",
    )  # fmt: skip
    assert_served_cleanly(result, 1)
    assert result["model"]["pixel_input"] and result["model"]["input_shape"] == [16, 16, 3]
    assert result["limit"]["images_per_s"] > 0


def test_bench_sends_uint8_pixels_the_server_normalises(tiny_repo: Path, tmp_path: Path) -> None:
    """--input pixels to a float model: UINT8 [3, H, W] through the Open Inference Protocol,
    normalised by the server and, in the limit, by the limit's own loop."""
    result = bench(
        tmp_path, "--start-server", "--model-repository", str(tiny_repo), "--api", "oip",
        "--input", "pixels", "--concurrency", "2", "--limit", "--limit-duration", "0.5",
        "--limit-batch", "1",
    )  # fmt: skip
    assert_served_cleanly(result, 1)
    assert result["inputs"]["kind"] == "pixels" and result["model"]["input_shape"] == [3, 16, 16]
    assert result["limit"]["images_per_s"] > 0


def test_models_benchmark_spreads_the_load_over_copies(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "models.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.models", "--model-repository", str(tiny_repo),
         "--model", "tiny", "--counts", "1,2", "--concurrency", "2", *SHORT,
         "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    rows = json.loads(out.read_text())
    assert [r["models"] for r in rows] == [1, 2]
    for r in rows:
        assert r["images_per_s"] > 0 and r["errors"] == 0
        assert r["idle_rss_mib"] > 0 and r["threads"] > 0
    assert rows[1]["threads"] > rows[0]["threads"]  # each model brings its own workers


def test_start_server_serves_the_repository_the_limit_reads(tmp_path: Path) -> None:
    """A relative --model-repository names the caller's files for the started server (and the
    floor server) as for --limit: the server once ran in the source root, where `models` is
    another repository."""
    make_tiny_model(tmp_path / "models" / "tiny" / "1" / "model.onnx")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.client.bench", "--model", "tiny", *SHORT,
         "--start-server", "--model-repository", "models", "--input", "tensor",
         "--concurrency", "1", "--floor", "--limit", "--limit-duration", "0.5",
         "--limit-batch", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(out.read_text())
    assert_served_cleanly(result, 1)
    assert result["server_model"]["versions"] == [1]
    assert result["limit"]["images_per_s"] > 0
    assert result["points"][0]["floor"]["errors"] == 0


@pytest.mark.parametrize("kind", ["tensor", "jpeg"])
def test_bench_over_http_beside_grpc(
    tiny_server: ServerProcess, tiny_repo: Path, tmp_path: Path, kind: str
) -> None:
    """--protocol grpc,http: each point over both ports, one after the other, and the ratio."""
    result = bench(
        tmp_path, "--target", tiny_server.target, "--metrics-url", tiny_server.metrics_url,
        "--http-target", f"127.0.0.1:{tiny_server.http_port}", "--api", "oip",
        "--protocol", "grpc,http", "--input", kind, "--concurrency", "2",
        "--model-path", str(tiny_repo / "tiny" / "1" / "model.onnx"),
    )  # fmt: skip
    assert_served_cleanly(result, 2)
    assert [p["protocol"] for p in result["points"]] == ["grpc", "http"]
    for p in result["points"]:
        assert p["server"]["requests_by_code"].keys() == {"OK"}
    (ratio,) = result["protocol_ratios"]
    assert ratio["load"] == "c=2" and ratio["http_over_grpc"] > 0


@pytest.mark.parametrize("api", ["imgclf", "oip"])
def test_bench_explained_beside_plain(
    tiny_server: ServerProcess, tiny_repo: Path, tmp_path: Path, api: str
) -> None:
    """--explain 2: each point plain then explained, the probe checked the maps, and the
    explained/plain cost per image of each round."""
    args = ["--target", tiny_server.target, "--metrics-url", tiny_server.metrics_url,
            "--api", api, "--explain", "2", "--concurrency", "2", "--rounds", "2"]  # fmt: skip
    if api == "oip":
        args += ["--model-path", str(tiny_repo / "tiny" / "1" / "model.onnx")]
    result = bench(tmp_path, *args)
    assert_served_cleanly(result, 2)
    assert [p["arm"] for p in result["points"]] == ["plain", "explain=2"]
    (cost,) = result["explain_costs"]
    assert cost["load"] == "c=2"
    for kind in ("wall", "cpu"):
        assert len(cost["explained_over_plain"][kind]["rounds"]) == 2
        assert cost["explained_over_plain"][kind]["median"] > 0


def test_explain_cost_benchmark_serves_a_maps_off_copy(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "explain_cost.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.explain_cost", "--model-repository", str(tiny_repo),
         "--model", "tiny", "--explain", "2", "--rounds", "1", "--duration", "1",
         "--warmup", "0.5", "--concurrency", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    (row,) = json.loads(out.read_text())["rounds"]
    assert list(row) == ["A plain, maps off", "B plain, maps on", "C explained"]
    for arm in row.values():
        assert arm["images_per_s"] > 0 and arm["errors"] == 0
    assert "| C/B: explained / plain |" in proc.stdout


def test_memory_benchmark_alternates_shared_and_unshared(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_instances", "--model-repository",
         str(tiny_repo), "--model", "tiny", "--instances", "1,2", "--rounds", "2",
         "--concurrency", "2", *SHORT, "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    rows = json.loads(out.read_text())
    order = [(r["instances"], r["design"]) for r in rows]
    assert order == [
        (1, "shared"), (1, "unshared"), (1, "unshared"), (1, "shared"),
        (2, "shared"), (2, "unshared"), (2, "unshared"), (2, "shared"),
    ]  # fmt: skip
    for r in rows:
        assert r["images_per_s"] > 0 and r["errors"] == 0
        assert r["loaded_rss_mib"] > 0 and r["peak_rss_mib"] >= r["loaded_rss_mib"]
        assert r["model_memory_mib"] > 0 and r["cpu_ms_per_image"] > 0
    assert "ratio" in proc.stdout


def test_bench_variants_serves_fp32_and_int8_side_by_side(tmp_path: Path) -> None:
    """`--variants fp32,int8` on the bundled digits model (its INT8 file passed the gate): one
    started server serves both copies, each at its forced precision, round after round, and
    the report compares them."""
    out = tmp_path / "variants.json"
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.client.bench", "--model", "digits", "--start-server",
         "--variants", "fp32,int8", "--input", "tensor", "--concurrency", "2", *SHORT,
         "--rounds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "accuracy gate: passed" in proc.stdout and "img/s /fp32" in proc.stdout
    result = json.loads(out.read_text())
    assert result["variants"] == ["fp32", "int8"] and result["rounds_run"] == 2
    assert len(result["rounds"]) == 2
    for measured in result["rounds"]:
        for tag in ("fp32", "int8"):
            assert_served_cleanly({"points": measured[tag]}, 1)
    fp32, int8 = result["comparison"]
    assert fp32["images_per_s_ratios"] == [1.0, 1.0]
    assert int8["variant"] == "int8" and all(r > 0 for r in int8["images_per_s_ratios"])
    assert int8["cpu_ms_per_image"] > 0 and int8["batch"] >= 1
