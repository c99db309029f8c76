"""The Open Inference Protocol (KServe v2) servicer, wire-compatible with Triton's superset.

Converts messages to core/manager calls; errors become status codes through maps_errors
(unary) or the stream's `error_message` (ModelStreamInfer), as Triton does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from importlib import metadata as importlib_metadata

import grpc
import numpy as np

from imgclf._generated.inference import grpc_service_pb2 as pb
from imgclf._generated.inference import grpc_service_pb2_grpc as pb_grpc
from imgclf.bytestensor import serialize_bytes_elements
from imgclf.dataplane import Core
from imgclf.errors import ImgclfError, InvalidInput, Unsupported, redact
from imgclf.grpc import deadline_of
from imgclf.grpc.errors import GENERIC_INTERNAL, maps_errors, public_message
from imgclf.grpc.oip_config import (
    max_request_batch,
    model_config,
    model_metadata,
    model_statistics,
    output_names,
)
from imgclf.grpc.oip_tensors import (
    CAM_OUTPUTS,
    PROBABILITIES_OUTPUT,
    add_cam_outputs,
    classification_strings,
    request_images,
    requested_explain,
)
from imgclf.grpc.shared_memory import SharedMemoryServicer
from imgclf.grpc.streams import StreamEnder, bounded_reader
from imgclf.models.loader import ServedModel

log = logging.getLogger(__name__)
Ctx = grpc.aio.ServicerContext

SERVER_NAME = "imgclf"
EXTENSIONS = ("classification", "model_repository", "model_configuration", "statistics",
              "schedule_policy")  # fmt: skip
SEQUENCE_PARAMETERS = {"sequence_id", "sequence_start", "sequence_end"}
"""Sequence batching parameters: accepted when unset (zero/false), refused otherwise."""
STREAM_WINDOW = 16
"""ModelStreamInfer: requests read from one stream and not yet answered to its client."""


def _server_version() -> str:
    try:
        return importlib_metadata.version("imgclf")
    except importlib_metadata.PackageNotFoundError:
        return "0"


def parse_version(text: str) -> int:
    if not text:
        return 0
    try:
        version = int(text)
    except ValueError:
        raise InvalidInput(f"model version must be an integer, got {text!r}") from None
    if version < 1:
        raise InvalidInput(f"model version must be >= 1, got {version}")
    return version


def _param(value: pb.InferParameter) -> object:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _int_param(value: object, minimum: int, message: str) -> int:
    """An integer parameter value of at least `minimum`, or InvalidInput(message)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidInput(message)
    return value


def request_policy(
    request: pb.ModelInferRequest, grpc_deadline: float | None
) -> tuple[float | None, int]:
    """(deadline as a time.monotonic() instant, priority) from the request's parameters.
    Other parameters are ignored, as Triton ignores those it does not know (clients send
    their own, e.g. perf_analyzer's `triton_enable_empty_final_response`)."""
    deadline = grpc_deadline
    priority = 0
    for key, value in request.parameters.items():
        v = _param(value)
        if key == "timeout":
            v = _int_param(v, 0, "parameter 'timeout' must be a non-negative integer (µs)")
            if v:
                mine = time.monotonic() + v / 1e6
                deadline = mine if deadline is None else min(deadline, mine)
        elif key == "priority":
            priority = _int_param(v, 0, "parameter 'priority' must be a non-negative integer")
        elif key in SEQUENCE_PARAMETERS and v not in (0, False, None, ""):
            raise Unsupported(f"parameter {key!r}: sequence batching is not supported")
    return deadline, priority


class InferenceServicer(SharedMemoryServicer, pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: Core, streams: StreamEnder | None = None) -> None:
        self.core = core
        self.streams = streams or StreamEnder()
        self.manager = core.manager
        self.version = _server_version()

    async def run(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> pb.ModelInferResponse:
        """One inference request, whatever carried it (the HTTP transport converts to and
        from these messages); domain errors are raised, not mapped."""
        return await self._infer(request, deadline)

    # ---- health and metadata ----------------------------------------------------------

    @maps_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Ctx
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @maps_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Ctx
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready)

    @maps_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Ctx
    ) -> pb.ModelReadyResponse:
        version = parse_version(request.version)
        return pb.ModelReadyResponse(ready=self.manager.is_ready(request.name, version))

    @maps_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Ctx
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self.version, extensions=list(EXTENSIONS)
        )

    @maps_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Ctx
    ) -> pb.ModelMetadataResponse:
        model = self.manager.get(request.name, parse_version(request.version))
        return model_metadata(model, list(self.manager.serving.get(model.name, {})))

    @maps_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Ctx
    ) -> pb.ModelConfigResponse:
        model = self.manager.get(request.name, parse_version(request.version))
        return pb.ModelConfigResponse(
            config=model_config(model, self.core.settings.max_images_per_request)
        )

    @maps_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Ctx
    ) -> pb.ModelStatisticsResponse:
        version = parse_version(request.version)
        if request.name:
            self.manager.get(request.name, version)  # NOT_FOUND when absent
        stats = [
            model_statistics(model)
            for name, versions in sorted(self.manager.serving.items())
            if not request.name or name == request.name
            for v, model in sorted(versions.items())
            if not version or v == version
        ]
        return pb.ModelStatisticsResponse(model_stats=stats)

    # ---- repository ---------------------------------------------------------------------

    @maps_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Ctx
    ) -> pb.RepositoryIndexResponse:
        Index = pb.RepositoryIndexResponse.ModelIndex
        rows = [
            Index(name=name, version=str(version) if version else "", state=state, reason=reason)
            for name, version, state, reason in self.manager.index()
            if not request.ready or state == "READY"
        ]
        return pb.RepositoryIndexResponse(models=rows)

    @maps_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Ctx
    ) -> pb.RepositoryModelLoadResponse:
        if request.parameters:
            raise Unsupported("load parameters (config override, file upload) are not supported")
        await self.manager.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @maps_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Ctx
    ) -> pb.RepositoryModelUnloadResponse:
        await self.manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- inference ----------------------------------------------------------------------

    def _outputs(self, request: pb.ModelInferRequest, model: ServedModel) -> list[tuple[str, int]]:
        """(output name, classification count or 0) for each requested output, checked."""
        available = output_names(model)
        wanted = list(request.outputs) or [
            pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in available
        ]
        outputs = []
        for out in wanted:
            if out.name in CAM_OUTPUTS:  # the data plane checks that the model explains
                continue
            if out.name not in available:
                raise InvalidInput(
                    f"unknown output {out.name!r}; this model has {available}",
                    reason="unknown_output",
                )
            class_count = 0
            for key, value in out.parameters.items():
                v = _param(value)
                if key == "classification":
                    v = _int_param(v, 1, "output parameter 'classification' must be >= 1")
                    class_count = min(v, self.core.settings.max_top_k)
                elif key != "binary_data":
                    raise InvalidInput(
                        f"unknown output parameter {key!r}", reason="unknown_parameter"
                    )
            outputs.append((out.name, class_count))
        return outputs

    async def _infer(
        self, request: pb.ModelInferRequest, grpc_deadline: float | None
    ) -> pb.ModelInferResponse:
        try:
            deadline, priority = request_policy(request, grpc_deadline)
            version = parse_version(request.model_version)
            explain = requested_explain(request)
        except ImgclfError as exc:
            self.core.reject(exc)
            raise
        outputs: list[tuple[str, int]] = []

        def check(model: ServedModel) -> None:
            outputs.extend(self._outputs(request, model))

        result = await self.core.infer(
            request.model_name,
            lambda model: request_images(
                request,
                model.engine.info.input_name,
                max_request_batch(model, self.core.settings.max_images_per_request),
            ),
            version=version,
            deadline=deadline,
            priority=priority,
            check=check,
            explain=explain,
        )
        model = result.model
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=str(model.version), id=request.id
        )
        n = result.outputs.shape[0]
        for name, class_count in outputs:
            values = result.probabilities if name == PROBABILITIES_OUTPUT else result.outputs
            values = np.ascontiguousarray(values, dtype="<f4")
            if class_count:
                rows = classification_strings(values, class_count, model.metadata.labels)
                k = len(rows[0]) if rows else 0
                response.outputs.add(name=name, datatype="BYTES", shape=[n, k])
                response.raw_output_contents.append(
                    serialize_bytes_elements([e for row in rows for e in row])
                )
            else:
                response.outputs.add(name=name, datatype="FP32", shape=list(values.shape))
                response.raw_output_contents.append(values.tobytes())
        if result.explanations:
            add_cam_outputs(response, result.explanations)
        return response

    @maps_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, deadline_of(context))

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; each answer carries the request's id.
        A failed request answers with `error_message`; the stream goes on.

        At most STREAM_WINDOW requests per stream are read and not yet answered to the
        client: a client that stops reading answers stops being read (gRPC flow control then
        stops it sending). When draining starts, the stream answers what it has read, then
        ends."""
        replies: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        pending: set[asyncio.Task[None]] = set()
        deadline = deadline_of(context)

        async def handle(request: pb.ModelInferRequest) -> None:
            try:
                response = await self._infer(request, deadline)
                await replies.put(pb.ModelStreamInferResponse(infer_response=response))
            except ImgclfError as exc:
                await replies.put(self._stream_error(request, public_message(exc)))
            except Exception:
                log.exception("stream inference failed")
                await replies.put(self._stream_error(request, GENERIC_INTERNAL))

        def start(request: pb.ModelInferRequest) -> None:
            task = asyncio.ensure_future(handle(request))
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def read() -> None:
            await bounded_reader(request_iterator, window, self.streams, start)
            if pending:
                await asyncio.gather(*pending)
            await replies.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply  # returns once gRPC has taken it (flow control permitting)
                window.release()
            await reader
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    @staticmethod
    def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
        return pb.ModelStreamInferResponse(
            error_message=message,
            # the request's own fields, echoed no longer than any other client text
            infer_response=pb.ModelInferResponse(
                model_name=redact(request.model_name),
                model_version=redact(request.model_version),
                id=redact(request.id),
            ),
        )
