"""`--floor`: what the gRPC stack alone costs on the same requests (see imgclf.grpc.floor).

The bare server runs in its own process, `python -m imgclf.grpc.floor`, started here on a free
port of 127.0.0.1 the way imgclf.client.bench.launcher starts `imgclf serve` (same working
directory, same interpreter), and stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from imgclf.client.bench.launcher import STOP_TIMEOUT_S, free_port, launch

READY_TIMEOUT_S = 60.0


class FloorServer:
    """The bare server in its own process, on a free port of 127.0.0.1."""

    def __init__(self, method: str, reply: bytes) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="imgclf-floor-")
        reply_file = Path(self._dir.name) / "reply.bin"
        reply_file.write_bytes(reply)
        self.log_path = Path(self._dir.name) / "floor.log"
        cmd = [sys.executable, "-m", "imgclf.grpc.floor", "--port", str(self.port),
               "--method", method, "--reply-file", str(reply_file)]  # fmt: skip
        self.proc = launch(cmd, self.log_path)
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float | None:
        """CPU seconds the server process has used (Linux /proc; None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"floor server exited with {self.proc.returncode}:\n{log}")
            with grpc.insecure_channel(self.target) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                    return
                except grpc.FutureTimeoutError:
                    pass
        raise RuntimeError(f"floor server not listening within {READY_TIMEOUT_S:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._dir.cleanup()

    def __enter__(self) -> FloorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
