"""imgclf.grpc.streams: ending long-lived streams, and the bounded read window (fake
request streams; the real server's behaviour is in tests/integration/test_streams.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from imgclf.grpc.streams import StreamEnder, bounded_reader
from tests.unit.service.support import HANG, let_run


class Requests:
    """An endless request stream that counts what was read from it."""

    def __init__(self) -> None:
        self.read = 0

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        self.read += 1
        return self.read


async def settle() -> None:
    """Time for the reader to go as far as it can (each read takes a few loop turns)."""
    await asyncio.sleep(0.05)


async def idle_stream() -> AsyncIterator[int]:
    await asyncio.sleep(HANG)
    yield 0


def test_until_ending_returns_the_result_or_cancels_when_draining_starts():
    async def main() -> None:
        ender = StreamEnder()
        assert await ender.until_ending(asyncio.sleep(0, "done")) == (True, "done")
        cancelled = asyncio.Event()

        async def forever() -> None:
            try:
                await asyncio.sleep(HANG)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        waiting = asyncio.ensure_future(ender.until_ending(forever()))
        await let_run()
        ender.end_all()
        assert await asyncio.wait_for(waiting, HANG) == (False, None)
        assert cancelled.is_set()
        # Once ending, nothing more is awaited.
        assert await asyncio.wait_for(ender.until_ending(forever()), HANG) == (False, None)

    asyncio.run(main())


def test_reading_stops_when_the_window_is_full_and_resumes_when_answers_are_taken():
    async def main() -> None:
        ender = StreamEnder()
        window = asyncio.Semaphore(3)
        requests = Requests()
        handled: list[int] = []
        reader = asyncio.ensure_future(bounded_reader(requests, window, ender, handled.append))
        await settle()
        assert handled == [1, 2, 3] and requests.read == 3  # nothing read beyond the window
        window.release()  # one answer taken by the client
        await settle()
        assert handled == [1, 2, 3, 4] and requests.read == 4
        ender.end_all()
        await asyncio.wait_for(reader, HANG)
        assert requests.read == 4

    asyncio.run(main())


def test_an_idle_stream_stops_being_read_when_draining_starts():
    async def main() -> None:
        ender = StreamEnder()
        window = asyncio.Semaphore(3)
        reader = asyncio.ensure_future(bounded_reader(idle_stream(), window, ender, print))
        await settle()
        assert not reader.done()
        ender.end_all()
        await asyncio.wait_for(reader, HANG)
        assert window._value == 3  # the slot taken for the read that never came is back

    asyncio.run(main())


def test_a_stream_error_echoes_no_megabyte_model_name() -> None:
    """A failed ModelStreamInfer request is answered in the stream with its own fields; a
    1 MB model name comes back cut to the length of any other client text (issue 12, 8)."""
    from imgclf._generated.inference import grpc_service_pb2 as oip_pb
    from imgclf.errors import MAX_MESSAGE_CHARS
    from imgclf.grpc.inference import InferenceServicer

    request = oip_pb.ModelInferRequest(model_name="m" * (1 << 20), id="7")
    reply = InferenceServicer._stream_error(request, "unknown model")
    assert len(reply.infer_response.model_name) <= MAX_MESSAGE_CHARS
    assert reply.infer_response.id == "7" and reply.error_message == "unknown model"
