"""A small Python client for imgclf.v1.ImageClassifier."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client.channel import auth_metadata, open_channel

DEFAULT_TARGET = "127.0.0.1:8001"


def encoded_image(data: bytes) -> pb.Image:
    """An image message from encoded bytes (JPEG, PNG, WebP, BMP, GIF)."""
    return pb.Image(encoded=data)


def explain_message(explain: int | Sequence[int] | None) -> pb.Explain | None:
    """Maps for the top `explain` classes (an int), or for the listed class indices."""
    if explain is None or explain == 0:
        return None
    if isinstance(explain, int):
        return pb.Explain(top_k=explain)
    return pb.Explain(classes=list(explain))


def class_map_values(class_map: pb.ClassMap) -> np.ndarray:
    """A ClassMap's values as a [height, width] float32 array."""
    return np.asarray(class_map.values, dtype=np.float32).reshape(class_map.height, class_map.width)


def tensor_image(tensor: np.ndarray) -> pb.Image:
    """An image message from a tensor at the model input: float32 (CHW, preprocessed) or
    uint8 pixels (sent as UINT8)."""
    if tensor.dtype == np.uint8:
        arr, dtype = np.ascontiguousarray(tensor), pb.UINT8
    else:
        arr, dtype = np.ascontiguousarray(tensor, dtype="<f4"), pb.FLOAT32
    return pb.Image(tensor=pb.Tensor(shape=arr.shape, dtype=dtype, data=arr.tobytes()))


class Client:
    """Blocking client. Use as a context manager, or call close().

    `tls_ca` turns on TLS (the CA that signed the server's certificate); `tls_cert`/`tls_key`
    add a client certificate (mutual TLS); `token` is sent as a bearer token."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float | None = 30.0,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.timeout = timeout
        self._channel = open_channel(target, tls_ca, tls_cert, tls_key)
        self._metadata = auth_metadata(token)
        self._stub = pb_grpc.ImageClassifierStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def classify(
        self,
        images: Sequence[bytes | np.ndarray | pb.Image],
        model: str = "",
        top_k: int = 0,
        version: int = 0,
        explain: int | Sequence[int] | None = None,
    ) -> pb.ClassifyResponse:
        """Classify encoded images (bytes) and/or preprocessed tensors (numpy arrays).
        `explain`: class activation maps (each result's `maps`, see `class_map_values`) of
        each image's top `explain` classes, or of the listed class indices."""
        msgs = [
            img if isinstance(img, pb.Image)
            else encoded_image(img) if isinstance(img, bytes)
            else tensor_image(img)
            for img in images
        ]  # fmt: skip
        request = pb.ClassifyRequest(
            model=model, version=version, images=msgs, top_k=top_k, explain=explain_message(explain)
        )
        return self._stub.Classify(request, timeout=self.timeout, metadata=self._metadata)

    def classify_files(
        self,
        paths: Sequence[str | Path],
        model: str = "",
        top_k: int = 0,
        explain: int | Sequence[int] | None = None,
    ) -> pb.ClassifyResponse:
        return self.classify(
            [Path(p).read_bytes() for p in paths], model=model, top_k=top_k, explain=explain
        )

    def list_models(self) -> pb.ListModelsResponse:
        return self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
