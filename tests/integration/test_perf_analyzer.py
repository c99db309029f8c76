"""Triton's perf_analyzer (the binary in the tritonclient wheel), unmodified, against the real
server: gRPC sync, async and streaming, HTTP sync and async, a few seconds each, with no error
in its output; --shared-memory system fails at start with the server's clear message.

perf_analyzer links Debian's libb64 (`apt-get install libb64-0d`) and libcudart.so.12 (the
`nvidia-cuda-runtime-cu12` wheel, in the dev extra); it needs no GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.client.bench.launcher import ServerProcess
from tests.conftest import require_executable, tool_missing

MODEL = "efficientnet_lite0"


def cudart_dir() -> str:
    """The folder of libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel."""
    try:
        import nvidia
    except ImportError:
        tool_missing("the nvidia-cuda-runtime-cu12 wheel (libcudart.so.12) is not installed")
    for root in nvidia.__path__:
        for lib in Path(root).glob("**/libcudart.so.12"):
            return str(lib.parent)
    tool_missing("libcudart.so.12 (nvidia-cuda-runtime-cu12) is not installed")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def perf_analyzer() -> tuple[str, dict[str, str]]:
    """The binary and the environment it runs in; missing libraries make it missing."""
    binary = require_executable("perf_analyzer", Path(sys.executable).parent / "perf_analyzer")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (cudart_dir(), env.get("LD_LIBRARY_PATH", "")) if p
    )
    probe = subprocess.run([binary, "--version"], env=env, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    if "error while loading shared libraries" in probe.stderr:
        tool_missing(f"perf_analyzer cannot start: {probe.stderr.strip()}")
    return binary, env


def run(perf_analyzer: tuple[str, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    binary, env = perf_analyzer
    return subprocess.run(
        [binary, "-m", MODEL, "--input-data", "zero", *args],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


MODES = {
    "grpc-sync": ("-i", "grpc"),
    "grpc-async": ("-i", "grpc", "--async"),
    "grpc-streaming": ("-i", "grpc", "--streaming"),
    "http-sync": ("-i", "http"),
    "http-async": ("-i", "http", "--async"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_perf_analyzer_runs_clean(
    perf_analyzer: tuple[str, dict[str, str]], bundled_server: ServerProcess, mode: str
) -> None:
    args = MODES[mode]
    port = bundled_server.http_port if "http" in args else bundled_server.grpc_port
    # Short windows; any spread counts as stable: this checks that it works, not how fast.
    reply = run(
        perf_analyzer, *args, "-u", f"127.0.0.1:{port}", "--concurrency-range", "2",
        "--measurement-interval", "1000", "--stability-percentage", "1000", "--max-trials", "3",
    )  # fmt: skip
    output = reply.stdout + reply.stderr
    assert reply.returncode == 0, output
    assert "error" not in output.lower() and "failed" not in output.lower(), output
    assert "Concurrency: 2, throughput:" in output, output


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_system_shared_memory_refused_with_a_clear_message(
    perf_analyzer: tuple[str, dict[str, str]], bundled_server: ServerProcess, protocol: str
) -> None:
    port = bundled_server.http_port if protocol == "http" else bundled_server.grpc_port
    reply = run(perf_analyzer, "-i", protocol, "-u", f"127.0.0.1:{port}",
                "--shared-memory", "system", "--concurrency-range", "1")  # fmt: skip
    output = reply.stdout + reply.stderr
    assert reply.returncode != 0
    assert "system shared memory is not supported by this server" in output, output
    assert "NotImplementedError" not in output and "Method not implemented" not in output
