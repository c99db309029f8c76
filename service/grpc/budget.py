"""Request messages inside the server's memory budget (service/budget.py).

gRPC reads a unary call's message into memory before the handler runs, so the budget is
claimed when the call arrives, before its message is read:

1. reserve the worst case, `max_message_bytes` x MESSAGE_COPIES, or refuse at once with
   RESOURCE_EXHAUSTED; a refused call is answered by a request-streaming handler that never
   reads, so its message is not received into memory (gRPC resets the stream);
2. once the message is read, keep only what it really takes (its size x MESSAGE_COPIES: the
   receive buffer and bytes, the parsed message, the image bytes taken out of it) for the
   call's life;
3. give it back when the call ends, however it ends: at the end of the handler, or, for a call
   that ended before its message arrived, when gRPC drops the call's handler.

The accounting rides on gRPC's own unary path (a deserializer and a handler wrapped per call);
serving every call as request-streaming to read the message ourselves halved the calls per
second of a trivial handler. Streaming requests (ModelStreamInfer, reflection) pass through
unchanged: each of their messages is bounded by `max_message_bytes` and read one at a time.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from imgclf.budget import MESSAGE_COPIES, MemoryBudget
from imgclf.errors import ImgclfError, MemoryExhausted
from imgclf.grpc.auth import refusing

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class _Hold:
    """One call's reservation; whatever is left of it is released when it is dropped."""

    __slots__ = ("_budget", "_nbytes")

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget = budget
        self._nbytes = nbytes

    def shrink_to(self, nbytes: int) -> None:
        """Keep `nbytes` (the message's real cost); the rest was never allocated."""
        excess, self._nbytes = self._nbytes - nbytes, nbytes
        if excess > 0:
            self._budget.release(excess, trim=False)

    def release(self) -> None:
        nbytes, self._nbytes = self._nbytes, 0
        if nbytes:
            self._budget.release(nbytes)

    def __del__(self) -> None:
        self.release()


def _drop_frames(exc: BaseException | None) -> None:
    """Clear the locals of the finished frames in an exception's tracebacks (its context and
    cause included). gRPC keeps an abort's exception on the call, whose handler frames hold
    the call: a reference cycle that would keep the request (and its image bytes) alive until
    the next garbage collection, long after its reservation was released."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__ or exc.__cause__


class MessageBudgetInterceptor(grpc.aio.ServerInterceptor):
    """Holds each unary request's message inside the memory budget (see the module doc)."""

    def __init__(
        self,
        budget: MemoryBudget,
        max_message_bytes: int,
        on_refused: Callable[[ImgclfError], None] = lambda error: None,
    ) -> None:
        self._budget = budget
        self._worst = max_message_bytes * MESSAGE_COPIES
        self._on_refused = on_refused
        """Counts a refusal (the core's metrics): the call never reaches the core."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if handler.request_streaming or handler.response_streaming:
            return handler  # streams; unary-stream: none of ours outside health
        if not self._budget.try_reserve(self._worst):
            error = MemoryExhausted(
                "server memory budget exhausted by requests in flight; retry later"
            )
            self._on_refused(error)
            self._budget.trim_soon()
            return refusing(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        return _accounted(handler, _Hold(self._budget, self._worst))


def _accounted(handler: grpc.RpcMethodHandler, hold: _Hold) -> grpc.RpcMethodHandler:
    """`handler` with its message's cost held by `hold` until it ends."""
    deserialize = handler.request_deserializer
    behaviour = handler.unary_unary

    def read(raw: bytes) -> Any:
        hold.shrink_to(len(raw) * MESSAGE_COPIES)
        return deserialize(raw) if deserialize is not None else raw

    async def serve(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except BaseException as exc:
            _drop_frames(exc)
            raise
        finally:
            hold.release()

    return grpc.unary_unary_rpc_method_handler(
        serve, request_deserializer=read, response_serializer=handler.response_serializer
    )
