"""Subprocess side of test_inference_wire_compat.py.

tritonclient registers Triton's definitions in the default protobuf descriptor pool as
"model_config.proto" / "grpc_service.proto"; our stubs register the very same message names
(inference.ModelConfig, ...) from "inference/model_config.proto". One interpreter cannot hold
both, so every step that touches generated code runs here, in a fresh interpreter that imports
exactly one side, and hands its results over as JSON or as serialized bytes on disk:

    python -m tests.unit.proto.wire_helper dump {triton|ours}      -> schema JSON on stdout
    python -m tests.unit.proto.wire_helper make-request DIR        (tritonclient side)
    python -m tests.unit.proto.wire_helper read-request DIR        (our side)
    python -m tests.unit.proto.wire_helper make-responses DIR      (our side)
    python -m tests.unit.proto.wire_helper read-responses DIR      (tritonclient side)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SIDES = ("triton", "ours")


def _modules(side: str) -> tuple[Any, Any]:
    """(model_config_pb2, service_pb2) of one side; importing them fills the descriptor pool."""
    if side == "triton":
        from tritonclient.grpc import model_config_pb2, service_pb2

        return model_config_pb2, service_pb2
    if side == "ours":
        from imgclf._generated.inference import grpc_service_pb2, model_config_pb2

        return model_config_pb2, grpc_service_pb2
    raise SystemExit(f"unknown side {side!r}: expected one of {SIDES}")


# ---------------------------------------------------------------------------------------------
# Schema dump
# ---------------------------------------------------------------------------------------------


def _label(field: Any) -> str:
    if hasattr(field, "is_repeated"):  # newer protobuf runtimes dropped FieldDescriptor.label
        if field.is_repeated:
            return "repeated"
        return "required" if field.is_required else "optional"
    return {1: "optional", 2: "required", 3: "repeated"}[field.label]


def _type_names() -> dict[int, str]:
    from google.protobuf.descriptor import FieldDescriptor

    return {
        getattr(FieldDescriptor, n): n[len("TYPE_") :].lower()
        for n in dir(FieldDescriptor)
        if n.startswith("TYPE_")
    }


def _field(field: Any, type_names: dict[int, str]) -> dict[str, Any]:
    if field.message_type is not None:
        type_name = field.message_type.full_name
    elif field.enum_type is not None:
        type_name = field.enum_type.full_name
    else:
        type_name = ""
    return {
        "name": field.name,
        "number": field.number,
        "type": type_names[field.type],
        "label": _label(field),
        "type_name": type_name,
        "oneof": field.containing_oneof.name if field.containing_oneof else "",
        # proto3 `optional` (explicit presence) would show up here and in a synthetic oneof.
        "presence": getattr(field, "has_presence", None),
        "packed": getattr(field, "is_packed", None),
    }


def _enum(enum: Any, out: dict[str, Any]) -> None:
    out["enums"][enum.full_name] = {v.name: v.number for v in enum.values}


def _message(message: Any, out: dict[str, Any], type_names: dict[int, str]) -> None:
    out["messages"][message.full_name] = {
        "map_entry": message.GetOptions().map_entry,
        "oneofs": sorted(o.name for o in message.oneofs),
        "fields": sorted(
            (_field(f, type_names) for f in message.fields), key=lambda f: f["number"]
        ),
    }
    for enum in message.enum_types:
        _enum(enum, out)
    for nested in message.nested_types:
        _message(nested, out, type_names)


def dump(side: str) -> dict[str, Any]:
    type_names = _type_names()
    out: dict[str, Any] = {"files": {}, "messages": {}, "enums": {}, "services": {}}
    for module in _modules(side):
        fd = module.DESCRIPTOR
        out["files"][fd.name] = {
            "package": fd.package,
            "dependencies": [d.name for d in fd.dependencies],
        }
        for enum in fd.enum_types_by_name.values():
            _enum(enum, out)
        for message in fd.message_types_by_name.values():
            _message(message, out, type_names)
        for service in fd.services_by_name.values():
            out["services"][service.full_name] = {
                m.name: {
                    "input": m.input_type.full_name,
                    "output": m.output_type.full_name,
                    "client_streaming": m.client_streaming,
                    "server_streaming": m.server_streaming,
                }
                for m in service.methods
            }
    return out


# ---------------------------------------------------------------------------------------------
# Shared summaries: the same code runs on either side, since names are identical
# ---------------------------------------------------------------------------------------------


def _params(params: Any) -> dict[str, list[Any]]:
    """map<string, InferParameter> -> {key: [which oneof member, value]}."""
    out = {}
    for key in sorted(params):
        which = params[key].WhichOneof("parameter_choice")
        out[key] = [which, getattr(params[key], which) if which else None]
    return out


def _as_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _summarize_request(request: Any) -> dict[str, Any]:
    return {
        "dict": _as_dict(request),
        "serialized_hex": request.SerializeToString(deterministic=True).hex(),
        "model_name": request.model_name,
        "model_version": request.model_version,
        "id": request.id,
        "parameters": _params(request.parameters),
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "parameters": _params(t.parameters),
            }
            for t in request.inputs
        ],
        "outputs": [{"name": t.name, "parameters": _params(t.parameters)} for t in request.outputs],
        "raw_input_contents_hex": [c.hex() for c in request.raw_input_contents],
    }


# ---------------------------------------------------------------------------------------------
# tritonclient -> ours: an inference request exactly as tritonclient builds it
# ---------------------------------------------------------------------------------------------


def make_request(workdir: Path) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    # The function InferenceServerClient.infer()/async_infer()/stream use to build the message.
    from tritonclient.grpc._utils import _get_inference_request

    image = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    scale = np.array([[0.5], [-2.25]], dtype=np.float32)
    tags = np.array([b"cat", "d\u00f6g".encode()], dtype=np.object_)

    inputs = [
        grpcclient.InferInput("image", list(image.shape), "UINT8"),
        grpcclient.InferInput("scale", list(scale.shape), "FP32"),
        grpcclient.InferInput("tags", list(tags.shape), "BYTES"),
        grpcclient.InferInput("mask", [2, 4, 4], "BOOL"),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(scale)
    inputs[2].set_data_from_numpy(tags)
    # Shared-memory inputs carry their location as per-tensor parameters and no raw content.
    inputs[3].set_shared_memory("region0", 32, offset=64)
    outputs = [
        grpcclient.InferRequestedOutput("probs", class_count=3),
        grpcclient.InferRequestedOutput("embedding"),
    ]
    request = _get_inference_request(
        model_name="efficientnet_lite0",
        inputs=inputs,
        model_version="1",
        request_id="req-42",
        outputs=outputs,
        sequence_id=7,
        sequence_start=True,
        sequence_end=False,
        priority=3,
        timeout=1500,
        parameters={"tag": "unit", "verbose": True, "top_k": 5},
    )
    # Triton's double extension has no client API; set it directly.
    request.parameters["temperature"].double_param = 0.25

    (workdir / "request.bin").write_bytes(request.SerializeToString(deterministic=True))
    summary = _summarize_request(request)
    summary["expected_raw_hex"] = {
        "image": image.tobytes().hex(),
        "scale": scale.tobytes().hex(),
    }
    (workdir / "request.triton.json").write_text(json.dumps(summary, indent=1))


def read_request(workdir: Path) -> None:
    _, service = _modules("ours")
    request = service.ModelInferRequest.FromString((workdir / "request.bin").read_bytes())
    (workdir / "request.ours.json").write_text(json.dumps(_summarize_request(request), indent=1))


# ---------------------------------------------------------------------------------------------
# ours -> tritonclient: responses as our server would build them
# ---------------------------------------------------------------------------------------------

PROBS = [[0.5, 0.25, 0.125], [0.0625, 0.75, -1.5]]
LABELS = [[b"0.5:281:tabby", b"0.25:285:Egyptian cat"], [b"0.75:1:goldfish", "\u00e9:0:x".encode()]]


def make_responses(workdir: Path) -> None:
    import struct

    from imgclf.bytestensor import serialize_bytes_elements

    config, service = _modules("ours")

    infer = service.ModelInferResponse(model_name="efficientnet_lite0", model_version="1", id="r1")
    infer.parameters["triton_final_response"].bool_param = True
    infer.parameters["sequence_id"].uint64_param = 2**63 + 5
    infer.parameters["score_scale"].double_param = 0.5
    infer.parameters["note"].string_param = "ok"
    infer.parameters["count"].int64_param = -3
    probs = infer.outputs.add(name="probs", datatype="FP32", shape=[2, 3])
    probs.parameters["binary_data"].bool_param = True
    infer.raw_output_contents.append(struct.pack("<6f", *PROBS[0], *PROBS[1]))
    infer.outputs.add(name="labels", datatype="BYTES", shape=[2, 2])
    infer.raw_output_contents.append(serialize_bytes_elements([b for row in LABELS for b in row]))

    typed = service.ModelInferResponse(model_name="efficientnet_lite0", model_version="1")
    t = typed.outputs.add(name="labels", datatype="BYTES", shape=[2, 2])
    t.contents.bytes_contents.extend([b for row in LABELS for b in row])
    t = typed.outputs.add(name="ints", datatype="INT64", shape=[3])
    t.contents.int64_contents.extend([-1, 0, 2**40])

    stream_ok = service.ModelStreamInferResponse(infer_response=infer)
    stream_typed = service.ModelStreamInferResponse(infer_response=typed)
    stream_err = service.ModelStreamInferResponse(error_message="model 'x' is not ready")

    metadata = service.ModelMetadataResponse(
        name="efficientnet_lite0", versions=["1", "2"], platform="onnxruntime_onnx"
    )
    metadata.inputs.add(name="image", datatype="UINT8", shape=[-1, 224, 224, 3])
    metadata.outputs.add(name="probs", datatype="FP32", shape=[-1, 1000])

    model = config.ModelConfig(
        name="efficientnet_lite0",
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=8,
        version_policy=config.ModelVersionPolicy(
            latest=config.ModelVersionPolicy.Latest(num_versions=1)
        ),
        dynamic_batching=config.ModelDynamicBatching(
            preferred_batch_size=[4, 8], max_queue_delay_microseconds=2000
        ),
        default_model_filename="model.onnx",
    )
    model.input.add(
        name="image",
        data_type=config.TYPE_UINT8,
        format=config.ModelInput.FORMAT_NHWC,
        dims=[224, 224, 3],
    )
    model.output.add(name="probs", data_type=config.TYPE_FP32, dims=[1000], label_filename="l.txt")
    model.instance_group.add(kind=config.ModelInstanceGroup.KIND_CPU, count=2)
    model.parameters["mean"].string_value = "0.485,0.456,0.406"
    model.dynamic_batching.priority_queue_policy[1].timeout_action = config.ModelQueuePolicy.DELAY
    model.model_transaction_policy.decoupled = False
    model.optimization.priority = config.ModelOptimizationPolicy.PRIORITY_MAX
    model.optimization.cuda.graph_spec.add(batch_size=4).input["image"].dim.extend([224, 224, 3])
    warmup = model.model_warmup.add(name="w", batch_size=1)
    warmup.inputs["image"].random_data = True
    model_config = service.ModelConfigResponse(config=model)

    stats = service.ModelStatisticsResponse()
    s = stats.model_stats.add(
        name="efficientnet_lite0",
        version="1",
        last_inference=1_700_000_000_000,
        inference_count=64,
        execution_count=8,
    )
    s.inference_stats.success.count = 64
    s.inference_stats.success.ns = 123_456_789
    s.inference_stats.queue.ns = 42
    s.inference_stats.cache_miss.count = 1
    s.batch_stats.add(batch_size=8).compute_infer.ns = 99
    s.memory_usage.add(type="CPU", id=0, byte_size=2**33)

    server = service.ServerMetadataResponse(
        name="imgclf", version="1.0", extensions=["model_configuration", "statistics"]
    )
    index = service.RepositoryIndexResponse()
    index.models.add(name="digits", version="1", state="READY")
    index.models.add(name="broken", version="1", state="UNAVAILABLE", reason="bad onnx")
    live = service.ServerLiveResponse(live=True)

    messages = {
        "infer": infer,
        "typed": typed,
        "stream_ok": stream_ok,
        "stream_typed": stream_typed,
        "stream_err": stream_err,
        "metadata": metadata,
        "model_config": model_config,
        "stats": stats,
        "server": server,
        "index": index,
        "live": live,
    }
    manifest = {}
    for key, message in messages.items():
        (workdir / f"{key}.bin").write_bytes(message.SerializeToString(deterministic=True))
        manifest[key] = {"type": message.DESCRIPTOR.name, "dict": _as_dict(message)}
    (workdir / "responses.ours.json").write_text(json.dumps(manifest, indent=1))


def read_responses(workdir: Path) -> None:
    from tritonclient.grpc import InferResult

    _, service = _modules("triton")
    manifest = json.loads((workdir / "responses.ours.json").read_text())
    parsed = {}
    for key, entry in manifest.items():
        cls = getattr(service, entry["type"])
        message = cls.FromString((workdir / f"{key}.bin").read_bytes())
        parsed[key] = {
            "dict": _as_dict(message),
            "serialized_hex": message.SerializeToString(deterministic=True).hex(),
            "original_hex": (workdir / f"{key}.bin").read_bytes().hex(),
        }

    def decode(response: Any, names: list[str]) -> dict[str, Any]:
        """Decode through tritonclient's own InferResult, as a client application would."""
        result = InferResult(response)
        tensors = {}
        for name in names:
            array = result.as_numpy(name)
            tensors[name] = {
                "dtype": str(array.dtype),
                "shape": list(array.shape),
                "values": [
                    v.decode("utf-8") if isinstance(v, bytes) else v for v in array.ravel().tolist()
                ],
            }
        return {"tensors": tensors, "response": _as_dict(result.get_response())}

    def load(key: str, cls: Any) -> Any:
        return cls.FromString((workdir / f"{key}.bin").read_bytes())

    stream_err = load("stream_err", service.ModelStreamInferResponse)
    decoded = {
        "infer": decode(load("infer", service.ModelInferResponse), ["probs", "labels"]),
        "stream_ok": decode(
            load("stream_ok", service.ModelStreamInferResponse).infer_response, ["probs", "labels"]
        ),
        # InferResult.as_numpy only decodes raw contents and typed BYTES contents.
        "stream_typed": decode(
            load("stream_typed", service.ModelStreamInferResponse).infer_response, ["labels"]
        ),
        "stream_err": {
            "error_message": stream_err.error_message,
            "has_response": stream_err.HasField("infer_response"),
        },
        "infer_parameters": _params(load("infer", service.ModelInferResponse).parameters),
    }
    out = {"parsed": parsed, "decoded": decoded}
    (workdir / "responses.triton.json").write_text(json.dumps(out, indent=1))


def main(argv: list[str]) -> int:
    command, arg = argv
    if command == "dump":
        json.dump(dump(arg), sys.stdout, indent=1, sort_keys=True)
        return 0
    steps = {
        "make-request": make_request,
        "read-request": read_request,
        "make-responses": make_responses,
        "read-responses": read_responses,
    }
    steps[command](Path(arg))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
