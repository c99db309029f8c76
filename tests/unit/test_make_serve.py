"""`make serve` takes its addresses from make variables and from the IMGCLF_* environment."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def serve_command(*make_args: str, **env: str) -> str:
    """The `imgclf serve` line `make serve` would run (dry run: nothing is installed or run)."""
    proc = subprocess.run(
        ["make", "-n", "-s", "serve", *make_args], cwd=REPO_ROOT, capture_output=True,
        text=True, env={**os.environ, **env}, timeout=60, check=True,
    )  # fmt: skip
    text = proc.stdout.replace("\\\n", " ")
    (line,) = [s for s in text.splitlines() if "imgclf serve" in s]
    return " ".join(line.split())


def test_defaults() -> None:
    assert serve_command().endswith(
        "imgclf serve --model-repository models --host 127.0.0.1 --grpc-port 8001 "
        "--metrics-port 8002 --default-model efficientnet_lite0"
    )


def test_environment_variables_are_not_ignored() -> None:
    line = serve_command(IMGCLF_GRPC_PORT="9001", IMGCLF_METRICS_PORT="9002")
    assert "--grpc-port 9001 --metrics-port 9002" in line


def test_make_variables_win_over_the_environment() -> None:
    line = serve_command("GRPC_PORT=7001", IMGCLF_GRPC_PORT="9001")
    assert "--grpc-port 7001" in line
