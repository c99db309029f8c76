"""Reading a request body within the limits: size (the gRPC message limit) and time."""

from __future__ import annotations

import asyncio

from aiohttp import ClientPayloadError, web

from imgclf.settings import ServerSettings


def too_large(size: int | None, limit: int) -> web.HTTPRequestEntityTooLarge:
    what = "request body" if size is None else f"request body of {size} bytes"
    return web.HTTPRequestEntityTooLarge(
        max_size=limit,
        actual_size=size or limit + 1,
        text=f"{what} is larger than the limit of {limit} bytes",
    )


async def read_body(request: web.Request, settings: ServerSettings) -> bytes:
    """The whole body: 413 when it declares or grows past max_message_bytes, 408 when it
    does not arrive within http_read_timeout_s (a slow sender holds one coroutine, no more)."""
    limit = settings.message_limit
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(declared, limit)
    try:
        # aiohttp enforces client_max_size while reading
        return await asyncio.wait_for(request.read(), settings.http_read_timeout_s)
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"request body did not arrive within {settings.http_read_timeout_s:g}s"
        ) from None
    except web.HTTPRequestEntityTooLarge:  # a chunked body grew past the limit
        raise too_large(None, limit) from None
    except (ConnectionResetError, ClientPayloadError):
        # The client closed before sending the body it declared: no one to answer.
        raise web.HTTPBadRequest(text="request body is truncated (connection closed)") from None
