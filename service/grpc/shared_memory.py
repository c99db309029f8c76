"""The Open Inference Protocol's shared-memory, trace and log RPCs: answered, not implemented.

Tensors travel in the request (raw contents) only. Like Triton started without shared-memory
support, the server holds no region: status lists none, unregistering (all, or a name) is a
no-op that succeeds, so clients that clean up at start (perf_analyzer, tritonclient) see no
error, and registering a region is refused with UNIMPLEMENTED and a message that says so.
"""

from __future__ import annotations

import grpc

from imgclf._generated.inference import grpc_service_pb2 as pb
from imgclf.errors import ModelNotFound, Unsupported
from imgclf.grpc.errors import maps_errors

Ctx = grpc.aio.ServicerContext

NO_SHARED_MEMORY = (
    "{kind} shared memory is not supported by this server; send tensors in the request "
    "(raw_input_contents / binary tensor data)"
)


class SharedMemoryServicer:
    """Mixin of the Open Inference servicer: the shared-memory and settings RPCs."""

    @maps_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Ctx
    ) -> pb.SystemSharedMemoryStatusResponse:
        if request.name:
            raise ModelNotFound(
                f"unable to find system shared memory region: {request.name!r}",
                reason="shared_memory",
            )
        return pb.SystemSharedMemoryStatusResponse()

    @maps_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Ctx
    ) -> pb.SystemSharedMemoryRegisterResponse:
        raise Unsupported(NO_SHARED_MEMORY.format(kind="system"))

    @maps_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Ctx
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        return pb.SystemSharedMemoryUnregisterResponse()

    @maps_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Ctx
    ) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            raise ModelNotFound(
                f"unable to find cuda shared memory region: {request.name!r}",
                reason="shared_memory",
            )
        return pb.CudaSharedMemoryStatusResponse()

    @maps_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Ctx
    ) -> pb.CudaSharedMemoryRegisterResponse:
        raise Unsupported(NO_SHARED_MEMORY.format(kind="CUDA"))

    @maps_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Ctx
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()

    @maps_errors
    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: Ctx
    ) -> pb.TraceSettingResponse:
        raise Unsupported("trace settings are not supported by this server")

    @maps_errors
    async def LogSettings(
        self, request: pb.LogSettingsRequest, context: Ctx
    ) -> pb.LogSettingsResponse:
        raise Unsupported("log settings are not supported by this server; use --log-level")
