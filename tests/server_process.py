"""Start the real `imgclf serve` in a subprocess on free ports on 127.0.0.1; stop it by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.client import open_channel

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal the server by PID and wait for it to exit; kill it if it overstays."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"server did not exit within {timeout}s:\n{self.log()}") from None


def wait_serving(
    target: str, proc: subprocess.Popen[bytes], log_path: Path, **tls: Path | None
) -> None:
    """Block until the server's health says SERVING (watching the health stream)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with open_channel(target, **tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {proc.returncode}:\n{log_path.read_text()}"
                )
            try:
                stream = stub.Watch(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=max(0.1, min(2.0, deadline - time.monotonic())),
                    wait_for_ready=True,
                )
                for reply in stream:
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        stream.cancel()
                        return
            except grpc.RpcError:
                time.sleep(0.1)  # not listening or not SERVING yet: re-check the process
    proc.kill()
    raise AssertionError(f"server not SERVING within {READY_TIMEOUT_S}s:\n{log_path.read_text()}")


def start_server(repo: Path, workdir: Path, *args: str, **tls: Path | None) -> ServerProcess:
    """Start `imgclf serve` on free ports; `tls` (tls_ca, tls_cert, tls_key) is how to reach
    it when the args turn TLS on."""
    grpc_port, metrics_port = free_port(), free_port()
    log_path = workdir / "server.log"
    cmd = [
        sys.executable, "-m", "service.cli", "serve",
        "--model-repository", str(repo),
        "--host", "127.0.0.1",
        "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
        *args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1]
        )
    server = ServerProcess(proc, grpc_port, metrics_port, log_path)
    try:
        wait_serving(server.target, proc, log_path, **tls)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        raise
    return server
