"""Long-lived streams: they end when the server starts draining, and hold a bounded window.

A stream that stays open (a service mesh's `grpc.health.v1.Health/Watch`, an idle
`ModelStreamInfer`) would otherwise hold shutdown for the whole grace period, although every
request has been answered: `server.stop(grace)` waits for every open call. When draining
starts, each stream answers what it has read and ends (status OK); its client reconnects
elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

T = TypeVar("T")


class StreamEnder:
    """The signal that long-lived streams must end (set once, when draining starts)."""

    def __init__(self) -> None:
        self._ending = asyncio.Event()

    @property
    def ending(self) -> bool:
        return self._ending.is_set()

    def end_all(self) -> None:
        self._ending.set()

    async def wait(self) -> None:
        await self._ending.wait()

    async def until_ending(self, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        """Await `awaitable` unless draining starts first: (True, its result), or
        (False, None) after cancelling it."""
        task = asyncio.ensure_future(awaitable)
        if not self.ending:
            ending = asyncio.ensure_future(self._ending.wait())
            try:
                await asyncio.wait((task, ending), return_when=asyncio.FIRST_COMPLETED)
            finally:
                ending.cancel()
                if not task.done():
                    task.cancel()
        if not task.done():
            task.cancel()
        await asyncio.wait((task,))  # let it finish cancelling (an outer cancel propagates)
        if task.cancelled():
            return False, None
        return True, task.result()


async def bounded_reader(
    requests: AsyncIterator[T],
    window: asyncio.Semaphore,
    ender: StreamEnder,
    handle: Callable[[T], None],
) -> None:
    """Read a stream's requests, one `window` slot each (released by whoever answers it):
    with the window full, reading stops, so gRPC's flow control stops the sender. Stops at
    the end of the stream or when draining starts."""
    iterator = aiter(requests)
    while True:
        if not window.locked():  # the common case: a slot is free, no need to race
            await window.acquire()
        else:
            ok, _ = await ender.until_ending(window.acquire())
            if not ok:
                return
        try:
            ok, request = await ender.until_ending(anext(iterator))
        except StopAsyncIteration:
            window.release()
            return
        if not ok:
            window.release()
            return
        handle(request)  # type: ignore[arg-type]


class HealthServicer(health_pb2_grpc.HealthServicer):
    """`grpc.health.v1.Health`: Check, and Watch streams that end when draining starts,
    after sending the last status (NOT_SERVING). (grpc's own servicer never ends a Watch.)"""

    def __init__(self, ender: StreamEnder) -> None:
        self._ender = ender
        self._status: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._version = 0
        self._changed = asyncio.Condition()

    async def set(self, service: str, status: int) -> None:
        async with self._changed:
            self._status[service] = status
            self._version += 1
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        sent = None
        seen = -1
        while True:
            if self._version != seen:  # send the status if it changed (never cut a write)
                seen = self._version
                status = self._status.get(request.service, unknown)
                if status != sent:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    sent = status
                continue
            if self._ender.ending:
                return
            await self._ender.until_ending(self._changed_since(seen))

    async def _changed_since(self, version: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._version != version)
