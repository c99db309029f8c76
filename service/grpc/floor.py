"""`--floor`: what the gRPC stack alone costs on the same requests.

A bare grpc.aio server, with the same server options as `imgclf serve`, registers the one
method the bench calls; it parses each request into its protobuf message, as any gRPC
server must, and answers with a reply captured from the real server (so the client moves
the same bytes both ways and its reply check passes). No model, no decoding, no batching:
its throughput and latency are the ceiling and the floor any Python gRPC server reaches on
this machine with these requests, and `served/floor` says how much of that the server's
own work costs.

Run as `python -m imgclf.grpc.floor --port P --method M --reply-file F`: the bench
(imgclf.client.bench.floor) starts it in its own process on a free port and stops it by PID,
so that the load generator, a client-side tool, imports none of the server's modules.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.inference import grpc_service_pb2 as oip_pb
from imgclf.grpc.options import server_options
from imgclf.settings import ServerSettings


def request_parser(method: str) -> object:
    """The protobuf parser of a method's request (None: keep the bytes)."""
    parsers = {
        "/imgclf.v1.ImageClassifier/Classify": pb.ClassifyRequest.FromString,
        "/inference.GRPCInferenceService/ModelInfer": oip_pb.ModelInferRequest.FromString,
    }
    return parsers.get(method)


async def serve(port: int, method: str, reply: bytes) -> None:
    async def answer(request: object, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    service, name = method.strip("/").rsplit("/", 1)
    handler = grpc.unary_unary_rpc_method_handler(
        answer, request_deserializer=request_parser(method), response_serializer=None
    )
    server = grpc.aio.server(options=server_options(ServerSettings()))
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
    p = argparse.ArgumentParser(prog="python -m imgclf.grpc.floor")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--reply-file", type=Path, required=True)
    args = p.parse_args(argv)
    asyncio.run(serve(args.port, args.method, args.reply_file.read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
