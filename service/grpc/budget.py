"""Request messages inside the server's memory budget (service/memory.py).

gRPC reads a unary call's message into memory before the handler runs, so the budget has to
be claimed before the message is read. This interceptor turns every unary-request method into
a request-streaming one on the wire side (the bytes on the wire are the same), which lets it
act before the message is read:

1. reserve the worst case, `max_message_bytes` x MESSAGE_COPIES, or refuse at once with
   RESOURCE_EXHAUSTED; refused, the message is never read (gRPC resets the stream);
2. read the message, then keep only what it really takes (its size x MESSAGE_COPIES: the
   received bytes and the parsed message) for the call's whole life;
3. give it back when the call ends, however it ends.

Streaming requests (ModelStreamInfer, reflection) pass through unchanged: each of their
messages is bounded by `max_message_bytes` and read one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service.errors import ImgclfError, MemoryExhausted
from service.memory import MESSAGE_COPIES, MemoryBudget

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


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
        if handler is None or handler.request_streaming or method.startswith(EXEMPT_PREFIXES):
            return handler
        if handler.response_streaming:  # unary-stream: none of ours outside health
            return handler
        return self._accounted(handler)

    def _accounted(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        budget, worst, on_refused = self._budget, self._worst, self._on_refused
        deserialize = handler.request_deserializer
        behaviour = handler.unary_unary

        async def serve(_requests: Any, context: grpc.aio.ServicerContext) -> Any:
            if not budget.try_reserve(worst):
                error = MemoryExhausted(
                    "server memory budget exhausted by requests in flight; retry later"
                )
                on_refused(error)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
            held = worst
            try:
                raw = await context.read()  # bytes: this handler has no deserializer
                if raw is grpc.aio.EOF:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                actual = len(raw) * MESSAGE_COPIES
                budget.release(held - actual, freed=False)  # the worst case was never allocated
                held = actual
                try:
                    request = deserialize(raw) if deserialize is not None else raw
                except Exception:
                    request = None
                del raw
                if request is None:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "request message could not be parsed"
                    )
                return await behaviour(request, context)
            finally:
                budget.release(held)

        return grpc.stream_unary_rpc_method_handler(
            serve, request_deserializer=None, response_serializer=handler.response_serializer
        )
