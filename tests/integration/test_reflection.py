"""Server reflection describes every service, the Open Inference Protocol's included."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imgclf.client.bench.launcher import ServerProcess


def reflect(
    target: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        return next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))


def test_reflection_lists_and_describes_every_service(tiny_server: ServerProcess) -> None:
    listed = reflect(tiny_server.target, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "imgclf.v1.ImageClassifier",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= names
    for symbol in ("imgclf.v1.ImageClassifier", "inference.GRPCInferenceService",
                   "inference.ModelConfig", "grpc.health.v1.Health"):  # fmt: skip
        reply = reflect(
            tiny_server.target,
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
        )
        assert reply.WhichOneof("message_response") == "file_descriptor_response", symbol
        assert reply.file_descriptor_response.file_descriptor_proto
