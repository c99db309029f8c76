"""The `imgclf` command as a person types it: a real subprocess against a real server on
127.0.0.1; every mistake ends in one line naming the file, port or flag, a hint, and the exit
status (2 usage, 1 failure), with no traceback unless --debug."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgclf.client.bench.launcher import ServerProcess, free_port, start_server
from tests.images import encode
from tests.tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
RED = np.full((30, 40, 3), (220, 20, 30), dtype=np.uint8)


def imgclf(*args: str, cwd: Path = REPO_ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "imgclf.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )  # fmt: skip


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The failure as printed: `imgclf ...: message` lines and their hints, nothing else."""
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def two_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two models and no --default-model."""
    repo = tmp_path_factory.mktemp("two-models")
    for name in ("tiny_a", "tiny_b"):
        make_tiny_model(repo / name / "1" / "model.onnx")
    server = start_server(repo, tmp_path_factory.mktemp("two-model-server"))
    yield server
    server.stop()


@pytest.fixture
def red_jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "red.jpg"
    path.write_bytes(encode(RED, "JPEG"))
    return path


def test_classify_answers_per_image_and_names_the_bad_file(
    tiny_server: ServerProcess, red_jpeg: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    proc = imgclf("classify", str(red_jpeg), str(notes), "--server", tiny_server.target)
    assert proc.returncode == 1
    assert "model tiny version 1" in proc.stdout
    assert str(red_jpeg) in proc.stdout and "red" in proc.stdout  # the good answer is kept
    lines = error_lines(proc)
    assert lines[0].startswith(f"imgclf classify: {notes}: INVALID_ARGUMENT: ")
    assert lines[1] == (
        "  hint: 1 of 2 file(s) failed; the other 1 were classified "
        "(JPEG, PNG, WebP, BMP or GIF files are accepted)"
    )
    assert len(lines) == 2


def test_classify_names_a_missing_file(tiny_server: ServerProcess, red_jpeg: Path) -> None:
    proc = imgclf("classify", str(red_jpeg), "nosuch.jpg", "--server", tiny_server.target)
    assert proc.returncode == 1
    assert str(red_jpeg) in proc.stdout
    assert error_lines(proc)[0] == (
        "imgclf classify: nosuch.jpg: cannot read it (No such file or directory)"
    )


def test_json_output_carries_the_error_of_the_bad_file(
    tiny_server: ServerProcess, red_jpeg: Path, tmp_path: Path
) -> None:
    import json

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    proc = imgclf("classify", str(red_jpeg), str(notes), "--json", "--server", tiny_server.target)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["results"][0]["top"][0]["label"] == "red"
    assert out["results"][1]["image"] == str(notes)
    assert out["results"][1]["error"].startswith("INVALID_ARGUMENT: ")


def test_no_server_says_how_to_start_one(red_jpeg: Path) -> None:
    port = free_port()  # nothing listens there
    proc = imgclf("classify", str(red_jpeg), "--server", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert error_lines(proc) == [
        f"imgclf classify: no server answering at 127.0.0.1:{port} (connection refused)",
        "  hint: start one with `make serve` (or `imgclf serve`) in another terminal, "
        "or pass --server HOST:PORT",
    ]


def test_served_models_without_a_server_says_the_same() -> None:
    port = free_port()
    proc = imgclf("served-models", "--server", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert error_lines(proc)[0] == (
        f"imgclf served-models: no server answering at 127.0.0.1:{port} (connection refused)"
    )


def test_debug_shows_the_traceback(red_jpeg: Path) -> None:
    port = free_port()
    proc = imgclf("classify", str(red_jpeg), "--server", f"127.0.0.1:{port}", "--debug")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert f"imgclf classify: no server answering at 127.0.0.1:{port}" in proc.stderr


def test_flag_typo_prints_the_subcommands_usage(red_jpeg: Path) -> None:
    proc = imgclf("classify", str(red_jpeg), "--topk", "3")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: imgclf classify ")
    assert proc.stderr.splitlines()[-1] == (
        "imgclf classify: error: unrecognized arguments: --topk 3 (did you mean --top-k?)"
    )


def test_two_models_and_none_named_says_model_and_lists_them(
    two_model_server: ServerProcess, red_jpeg: Path
) -> None:
    proc = imgclf("classify", str(red_jpeg), "--server", two_model_server.target)
    assert proc.returncode == 2
    assert error_lines(proc) == [
        f"imgclf classify: {two_model_server.target} serves 2 models (tiny_a, tiny_b) and has "
        "no default model: name one with --model",
        "  hint: e.g. --model tiny_a; a server started with --default-model NAME picks one itself",
    ]
    named = imgclf("classify", str(red_jpeg), "--model", "tiny_b", "--server",
                   two_model_server.target)  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert "model tiny_b version 1" in named.stdout


def test_busy_metrics_port_is_named(tiny_repo: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = imgclf(
            "serve", "--model-repository", str(tiny_repo), "--grpc-port", "0",
            "--metrics-port", str(port),
        )  # fmt: skip
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert errors[0].endswith(
        f"could not bind metrics on 127.0.0.1:{port} (Address already in use); "
        "pass another --metrics-port (0 picks a free one)"
    )


def test_help_shows_defaults() -> None:
    proc = imgclf("classify", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "HOST:PORT of the server (default: 127.0.0.1:8001)" in text
    assert "seconds per call (default: 30.0)" in text
    assert "classes per image (default: 5)" in text
    health = " ".join(imgclf("health", "--help").stdout.split())
    assert "seconds per call (default: 5.0)" in health
    bench = " ".join(imgclf("bench", "--help").stdout.split())
    assert "HOST:PORT of the gRPC server (default: 127.0.0.1:8001)" in bench
    assert "seconds measured per point (default: 10.0)" in bench
    assert "(default: 3)" in bench  # --rounds


def test_an_invalid_setting_names_its_flag(tmp_path: Path) -> None:
    proc = imgclf("serve", "--max-batch-size", "-1", "--grpc-port", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "imgclf serve: --max-batch-size: Input should be greater than or equal to 0 (got -1)",
        "  hint: the flag or its IMGCLF_* variable (see --help)",
    ]


def test_a_missing_model_repository_is_named(tmp_path: Path) -> None:
    proc = imgclf("serve", "--model-repository", str(tmp_path / "nosuch"), "--grpc-port", "0",
                  "--metrics-port", "0", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("imgclf", "  hint"))]
    assert lines == [
        f"imgclf serve: model repository {tmp_path / 'nosuch'} does not exist",
        "  hint: pass --model-repository DIR (a checkout's models/) or set IMGCLF_MODEL_REPOSITORY",
    ]
