"""Transport security: TLS / mutual TLS credentials and bearer-token authentication.

The token is compared in constant time. Health checks are exempt, so load balancers and
Kubernetes probes need no token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The configured token: from the file (stripped) when given, else the value itself."""
    if token_file is not None:
        value = token_file.read_text().strip()
        if not value:
            raise ValueError(f"token file {token_file} is empty")
        return value
    return token or None


def server_credentials(
    cert_file: Path, key_file: Path, client_ca_file: Path | None
) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with a client CA, clients must present a certificate
    signed by it (mutual TLS)."""
    pair = [(key_file.read_bytes(), cert_file.read_bytes())]
    if client_ca_file is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair, root_certificates=client_ca_file.read_bytes(), require_client_auth=True
    )


def refusing(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler that refuses with `code` before reading the request: served as a
    request-streaming method (the same bytes on the wire) that never reads, so a refused
    call's message is not received into memory, let alone parsed (the token check here, the
    memory budget in imgclf.grpc.budget)."""

    async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    serializer = handler.response_serializer
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, response_serializer=serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=serializer)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` metadata on every call but health checks."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def _authorized(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> bool:
        for key, value in metadata or ():
            if key.lower() == "authorization":
                given = value if isinstance(value, bytes) else value.encode()
                # RFC 7235: the scheme is case-insensitive ("bearer", "BEARER", ...).
                scheme, _, credentials = given.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                return hmac.compare_digest(credentials.strip(b" "), self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        log.warning("refused %s: missing or wrong bearer token", method)
        return refusing(handler, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
