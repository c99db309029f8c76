"""Run the real `imgclf serve` in a subprocess on free ports, for as long as a benchmark or a
test needs it: `imgclf bench --start-server`, the scripts under benchmarks/ and the
integration tests all start their servers here.

The server is started as `python -m imgclf.cli serve` (the interpreter running the caller) in
the caller's working directory, with the model repository resolved first, so a relative path
(`--model-repository models`, a TLS file in the server arguments) names the same file for the
server as for the caller (`imgclf bench --limit` reads the model file itself). It is watched
over gRPC health until it says SERVING, and stopped by its PID with SIGTERM (graceful drain),
killed if it overstays. `server_or_target` is the "start a server, or use --target" of every
load tool.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgclf.client.channel import open_channel

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log_path: Path
    host: str = "127.0.0.1"
    http_port: int = 0
    """The HTTP/REST port (0: HTTP off)."""

    @property
    def target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal the server by PID and wait for it to exit; returns its exit code. One that
        overstays is killed, and RuntimeError (with its log) says so."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError(f"server did not exit within {timeout}s:\n{self.log()}") from None


def wait_serving(
    target: str, proc: subprocess.Popen[bytes], log_path: Path,
    timeout: float = READY_TIMEOUT_S, **tls: Path | None,
) -> None:  # fmt: skip
    """Block until the server's health says SERVING (watching the health stream);
    RuntimeError with its log if it exits or never does."""
    deadline = time.monotonic() + timeout
    with open_channel(target, **tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
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
    raise RuntimeError(f"server not SERVING within {timeout:.0f}s:\n{log_path.read_text()}")


def launch(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server process (`cmd`) in the caller's working directory, its output in
    `log_path`. One way to launch for `imgclf serve` and the floor server alike."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)


def start_server(
    repo: Path, workdir: Path, *args: str, host: str = "127.0.0.1", **tls: Path | None
) -> ServerProcess:
    """Start `imgclf serve` on free ports, its log in `workdir`, and wait until it serves;
    `tls` (tls_ca, tls_cert, tls_key) is how to reach it when the args turn TLS on."""
    grpc_port, metrics_port = free_port(host), free_port(host)
    http_port = 0 if "--no-http" in args else free_port(host)
    log_path = workdir / "server.log"
    cmd = [
        sys.executable, "-m", "imgclf.cli", "serve",
        "--model-repository", str(Path(repo).resolve()),
        "--host", host,
        "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
        *(["--http-port", str(http_port)] if http_port else []),
        *args,
    ]  # fmt: skip
    proc = launch(cmd, log_path)
    server = ServerProcess(proc, grpc_port, metrics_port, log_path, host, http_port)
    try:
        wait_serving(server.target, proc, log_path, **tls)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        raise
    return server


@contextlib.contextmanager
def serving(
    repo: Path, args: str = "", say: Callable[[str], None] | None = None, **tls: Path | None
) -> Iterator[ServerProcess]:
    """A started server for the length of a `with` block (its log in a temporary folder),
    `args` as one shell-quoted string of extra `imgclf serve` arguments; `say` hears the
    start and, when the server exits with a failure, the end of its log."""
    if say:
        say(f"starting imgclf serve on {repo} {args}".rstrip())
    with tempfile.TemporaryDirectory(prefix="imgclf-server-") as workdir:
        server = start_server(repo, Path(workdir), *shlex.split(args), **tls)
        try:
            yield server
        finally:
            code = server.stop()
            if code != 0 and say:
                say(f"server exited with {code}; its log:\n{server.log()[-4000:]}")


@dataclass
class Target:
    """Where load goes: a gRPC address, its /metrics URL (may be empty) and, for a server
    started here, its process id (for /proc/<pid>/status)."""

    address: str
    metrics_url: str = ""
    pid: int | None = None
    server: ServerProcess | None = None


@contextlib.contextmanager
def server_or_target(
    target: str | None, repo: Path, args: str = "", metrics_url: str = "",
    pid: int | None = None, say: Callable[[str], None] | None = None, **tls: Path | None,
) -> Iterator[Target]:  # fmt: skip
    """The `--target` given (with its /metrics URL and process id when known), or else an
    `imgclf serve` of `repo` (with `args`) started for the length of the `with` block: the one
    "start a server or use --target" of the load tools."""
    if target:
        yield Target(target, metrics_url, pid)
        return
    with serving(repo, args, say, **tls) as server:
        yield Target(server.target, server.metrics_url, server.proc.pid, server)
