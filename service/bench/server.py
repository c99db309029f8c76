"""`--start-server`: run `imgclf serve` on free ports for the length of a benchmark.

The server is started as `python -m service.cli serve` (the interpreter running the bench),
watched over gRPC health until it says SERVING, and stopped by its PID with SIGTERM (graceful
drain), killed if it overstays.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class StartedServer:
    """A running `imgclf serve`; use as a context manager, or call stop()."""

    def __init__(self, model_repository: Path, extra_args: str = "", host: str = "127.0.0.1"):
        self.host = host
        self.grpc_port, self.metrics_port = free_port(host), free_port(host)
        self._dir = tempfile.TemporaryDirectory(prefix="imgclf-bench-")
        self.log_path = Path(self._dir.name) / "server.log"
        self.cmd = [
            sys.executable, "-m", "service.cli", "serve",
            "--model-repository", str(model_repository),
            "--host", host,
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            *shlex.split(extra_args),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, channel: grpc.Channel, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until health says SERVING; RuntimeError (with the log) if it exits or never
        does."""
        deadline = time.monotonic() + timeout
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.2)
        log = self.log()
        self.stop()
        raise RuntimeError(f"server not SERVING within {timeout:.0f}s:\n{log}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM by PID, wait; SIGKILL if it overstays. Returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._dir.cleanup()
        return self.proc.returncode

    def __enter__(self) -> StartedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
