"""The wire: how to reach the server and what to send it, built once per run.

Requests are serialised up front (the load generator then only moves bytes); replies are
parsed only by `check_reply`, on the probe request that precedes every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from imgclf.bytestensor import serialize_bytes_elements
from imgclf.client.channel import auth_metadata, credentials, make_aio_channel, make_channel

CLASSIFY = "/imgclf.v1.ImageClassifier/Classify"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CAM_OUTPUT = "cam"
"""The Open Inference output of class activation maps (parameter `classes`: the top k)."""


@dataclass(frozen=True)
class Connection:
    """How to reach the server (picklable: the PEM files travel as bytes)."""

    target: str
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    token: str | None = None
    protocol: str = "grpc"
    """grpc, or http (target is then the HTTP port; plaintext only)."""

    @classmethod
    def from_files(
        cls, target: str, tls_ca: Path | None = None, tls_cert: Path | None = None,
        tls_key: Path | None = None, token_file: Path | None = None,
    ) -> Connection:  # fmt: skip
        def read(p: Path | None) -> bytes | None:
            return p.read_bytes() if p else None

        token = token_file.read_text().strip() if token_file else None
        return cls(target, read(tls_ca), read(tls_cert), read(tls_key), token)

    @property
    def secure(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return auth_metadata(self.token)

    def channel(self) -> grpc.Channel:
        return make_channel(self.target, self._credentials())

    def aio_channel(self) -> grpc.aio.Channel:
        return make_aio_channel(self.target, self._credentials())

    def _credentials(self) -> grpc.ChannelCredentials | None:
        return credentials(self.tls_ca, self.tls_cert, self.tls_key)


def build_payloads(
    api: str, model: str, items: list[bytes] | list[np.ndarray], batch: int, *,
    input_name: str = "input", image_input_name: str = "image", output_name: str = "",
    top_k: int = 0, explain: int = 0,
) -> tuple[str, list[bytes]]:  # fmt: skip
    """(method path, serialised requests): one request per starting item, each carrying
    `batch` consecutive items (encoded images as bytes, or float32 CHW tensors); with
    `explain`, asking for the class activation maps of each image's top `explain` classes."""
    from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
    from imgclf._generated.inference import grpc_service_pb2 as oip
    from imgclf.client import tensor_image

    n = len(items)
    payloads = []
    for start in range(n):
        group = [items[(start + j) % n] for j in range(batch)]
        encoded = isinstance(group[0], bytes)
        if api == "imgclf":
            images = [pb.Image(encoded=g) if encoded else tensor_image(g) for g in group]
            req = pb.ClassifyRequest(model=model, images=images, top_k=top_k)
            if explain:
                req.explain.top_k = explain
        elif api == "oip":
            if encoded:
                raw = serialize_bytes_elements(group)  # type: ignore[arg-type]
                tensor = oip.ModelInferRequest.InferInputTensor(
                    name=image_input_name, datatype="BYTES", shape=[batch, 1]
                )
            else:
                pixels = group[0].dtype == np.uint8  # type: ignore[union-attr]
                arr = np.ascontiguousarray(np.stack(group), dtype="u1" if pixels else "<f4")
                raw = arr.tobytes()
                tensor = oip.ModelInferRequest.InferInputTensor(
                    name=input_name, datatype="UINT8" if pixels else "FP32", shape=list(arr.shape)
                )
            output = oip.ModelInferRequest.InferRequestedOutputTensor
            outputs = [output(name=output_name)] if output_name else []
            if explain:
                outputs.append(output(name=CAM_OUTPUT))
                outputs[-1].parameters["classes"].int64_param = explain
            req = oip.ModelInferRequest(
                model_name=model, inputs=[tensor], outputs=outputs, raw_input_contents=[raw]
            )
        else:
            raise ValueError(f"api must be imgclf or oip, got {api!r}")
        payloads.append(req.SerializeToString())
    return (CLASSIFY if api == "imgclf" else MODEL_INFER), payloads


def check_reply(api: str, reply: bytes, batch: int, explain: int = 0) -> str | None:
    """Why a reply is not a classification of `batch` images, with `explain` maps each when
    asked (None: it is)."""
    from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
    from imgclf._generated.inference import grpc_service_pb2 as oip

    if api == "imgclf":
        msg = pb.ClassifyResponse.FromString(reply)
        if len(msg.results) != batch:
            return f"{len(msg.results)} results for {batch} images"
        maps = {len(r.maps) for r in msg.results}
        if explain and maps != {explain}:
            return f"{sorted(maps)} maps per image, not {explain}"
        return None
    infer = oip.ModelInferResponse.FromString(reply)
    if not infer.outputs:
        return "no outputs"
    if infer.outputs[0].shape and infer.outputs[0].shape[0] != batch:
        return f"output {infer.outputs[0].name} has shape {list(infer.outputs[0].shape)}"
    cams = [list(o.shape) for o in infer.outputs if o.name == CAM_OUTPUT]
    if explain and not (cams and cams[0][:2] == [batch, explain]):
        return f"no {CAM_OUTPUT} output of [{batch}, {explain}, h, w] (got {cams})"
    return None


def probe(connection: Connection, method: str, payload: bytes, timeout: float) -> bytes:
    """One request through a blocking channel (raises grpc.RpcError)."""
    with connection.channel() as channel:
        call = channel.unary_unary(method)
        return call(payload, timeout=timeout, metadata=connection.metadata)


def perf_analyzer_data(
    items: list[bytes] | list[np.ndarray], *, input_name: str = "input",
    image_input_name: str = "image",
) -> dict:  # fmt: skip
    """The same inputs as a perf_analyzer --input-data JSON document (one batch-1 entry per
    item): encoded images as the BYTES input (base64 of the length-prefixed element, as
    perf_analyzer wants it), tensors as the FP32 input (base64 of the little-endian floats),
    uint8 pixels as they are."""
    import base64

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    entries = []
    for item in items:
        if isinstance(item, bytes):
            entries.append({image_input_name: {"b64": b64(serialize_bytes_elements([item]))}})
        else:
            dtype = "u1" if item.dtype == np.uint8 else "<f4"
            entries.append({input_name: {"b64": b64(np.ascontiguousarray(item, dtype).tobytes())}})
    return {"data": entries}
