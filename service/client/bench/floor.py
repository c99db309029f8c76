"""`--floor`: what the gRPC stack alone costs on the same requests.

A bare grpc.aio server, with the same server options as `imgclf serve`, registers the one
method the bench calls; it parses each request into its protobuf message, as any gRPC
server must, and answers with a reply captured from the real server (so the client moves
the same bytes both ways and its reply check passes). No model, no decoding, no batching:
its throughput and latency are the ceiling and the floor any Python gRPC server reaches on
this machine with these requests, and `served/floor` says how much of that the server's
own work costs.

Run as `python -m imgclf.client.bench.floor --port P --method M --reply-file F`; `FloorServer`
starts it on a free port and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from imgclf.client.bench.launcher import STOP_TIMEOUT_S, free_port

READY_TIMEOUT_S = 60.0


def request_parser(method: str) -> object:
    """The protobuf parser of a method's request (None: keep the bytes)."""
    from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
    from imgclf._generated.inference import grpc_service_pb2 as oip_pb

    parsers = {
        "/imgclf.v1.ImageClassifier/Classify": pb.ClassifyRequest.FromString,
        "/inference.GRPCInferenceService/ModelInfer": oip_pb.ModelInferRequest.FromString,
    }
    return parsers.get(method)


async def serve(port: int, method: str, reply: bytes) -> None:
    from imgclf.server import grpc_server_options
    from imgclf.settings import ServerSettings

    async def answer(request: object, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    service, name = method.strip("/").rsplit("/", 1)
    handler = grpc.unary_unary_rpc_method_handler(
        answer, request_deserializer=request_parser(method), response_serializer=None
    )
    server = grpc.aio.server(options=grpc_server_options(ServerSettings()))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {name: handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imgclf.client.bench.floor")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--reply-file", type=Path, required=True)
    args = p.parse_args(argv)
    asyncio.run(serve(args.port, args.method, args.reply_file.read_bytes()))
    return 0


class FloorServer:
    """The bare server in its own process, on a free port of 127.0.0.1."""

    def __init__(self, method: str, reply: bytes) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="imgclf-floor-")
        reply_file = Path(self._dir.name) / "reply.bin"
        reply_file.write_bytes(reply)
        self.log_path = Path(self._dir.name) / "floor.log"
        cmd = [sys.executable, "-m", "imgclf.client.bench.floor", "--port", str(self.port),
               "--method", method, "--reply-file", str(reply_file)]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
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


if __name__ == "__main__":
    sys.exit(main())
