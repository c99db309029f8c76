"""The imgclf.v1.ImageClassifier servicer: protobuf <-> core objects, nothing else."""

from __future__ import annotations

import math

import grpc
import numpy as np

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.dataplane import Classification, ClassifyResult, Core, ImageInput
from imgclf.errors import ImgclfError, InvalidInput
from imgclf.explain import NO_EXPLAIN, ExplainRequest
from imgclf.grpc import deadline_of
from imgclf.grpc.errors import maps_errors

DTYPES = {pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2"), pb.UINT8: np.dtype("u1")}


def tensor_from_pb(tensor: pb.Tensor, index: int) -> np.ndarray:
    """A Tensor message -> an array: float32 (FLOAT16 is widened), or uint8 pixels."""
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        name = pb.DataType.Name(tensor.dtype) if tensor.dtype in pb.DataType.values() else "?"
        raise InvalidInput(
            f"image {index}: tensor dtype {name} is not supported; send FLOAT32, FLOAT16 or UINT8"
        )
    shape = tuple(tensor.shape)
    if any(d <= 0 for d in shape):
        raise InvalidInput(f"image {index}: tensor shape {list(shape)} has a non-positive dim")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if len(tensor.data) != expected:
        raise InvalidInput(
            f"image {index}: tensor shape {list(shape)} needs {expected} bytes of "
            f"{np.dtype(dtype).name}, got {len(tensor.data)}"
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    return array.astype(np.float32) if dtype.kind == "f" and dtype.itemsize == 2 else array


def image_from_pb(image: pb.Image, index: int) -> ImageInput:
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return ImageInput(encoded=image.encoded)
    if kind == "tensor":
        array = tensor_from_pb(image.tensor, index)
        return ImageInput(pixels=array) if array.dtype == np.uint8 else ImageInput(tensor=array)
    raise InvalidInput(f"image {index} has neither encoded bytes nor a tensor")


def explain_from_pb(request: pb.ClassifyRequest) -> ExplainRequest:
    if not request.HasField("explain"):
        return NO_EXPLAIN
    explain = request.explain
    if explain.top_k and explain.classes:
        raise InvalidInput("explain: set top_k or classes, not both", reason="bad_explain")
    return ExplainRequest(explain.top_k, tuple(explain.classes))


def classification_to_pb(r: Classification) -> pb.Classification:
    out = pb.Classification(
        probabilities=r.probabilities.tolist(),
        top=[pb.ClassScore(index=s.index, label=s.label, probability=s.probability)
             for s in r.top],
    )  # fmt: skip
    if r.explanation is not None:
        out.width, out.height = r.explanation.width, r.explanation.height
        for m in r.explanation.maps:
            h, w = m.values.shape
            out.maps.add(
                index=m.index, label=m.label, probability=m.probability, height=h, width=w,
                values=m.values.ravel().tolist(), box=m.box,
            )  # fmt: skip
    return out


def response_to_pb(result: ClassifyResult) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        model=result.model,
        version=result.version,
        results=[classification_to_pb(r) for r in result.results],
    )


class ImageClassifierServicer(pb_grpc.ImageClassifierServicer):
    def __init__(self, core: Core) -> None:
        self.core = core

    @maps_errors
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        try:
            explain = explain_from_pb(request)
        except ImgclfError as exc:
            self.core.reject(exc)
            raise
        result = await self.core.classify(
            request.model,
            lambda _model: [image_from_pb(img, i) for i, img in enumerate(request.images)],
            top=request.top_k,
            version=request.version,
            deadline=deadline_of(context),
            count=len(request.images),  # limits checked before any image is converted
            explain=explain,
        )
        return response_to_pb(result)

    @maps_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        infos = []
        for name, versions in sorted(self.core.manager.serving.items()):
            model = versions[max(versions)]
            meta = model.metadata
            infos.append(
                pb.ModelInfo(
                    name=name,
                    versions=sorted(versions, reverse=True),
                    labels=meta.labels,
                    input_shape=list(model.sample_shape),
                    provider=model.engine.info.provider,
                    max_batch_size=model.max_batch_size,
                    explain=model.explaining.head is not None,
                    metadata={
                        **{k: str(v) for k, v in meta.provenance.items()},
                        "precision": model.precision,
                        "served_file": model.served_file,
                    },
                )
            )
        return pb.ListModelsResponse(models=infos)
