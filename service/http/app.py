"""The HTTP server: aiohttp on the gRPC server's event loop, sharing its core.

One middleware holds what every route shares: the bearer token, domain errors and HTTP
errors as `{"error": ...}` with their status, and the request counter by route and status.
Stop: the listener closes (new connections refused), requests already received run to their
end within the grace period.
"""

from __future__ import annotations

import logging

from aiohttp import web

from imgclf.budget import MESSAGE_COPIES
from imgclf.errors import ImgclfError, MemoryExhausted
from imgclf.grpc.inference import InferenceServicer
from imgclf.http import page
from imgclf.http.classify import ClassifyRoutes
from imgclf.http.errors import (
    domain_error_response,
    error_response,
    internal_error_response,
)
from imgclf.http.oip import OipRoutes, json_response
from imgclf.http.openapi import openapi_document
from imgclf.http.security import EXEMPT_PATHS, BearerToken, server_ssl_context
from imgclf.metrics.prometheus import Metrics

log = logging.getLogger(__name__)

KEPT_HEADERS = ("allow", "retry-after")
"""Headers of aiohttp's own HTTP errors that the JSON error response keeps."""

MAX_HEADER_BYTES = 8190
"""Longest request line and longest header field (aiohttp's default; longer ones get 400)."""


def body_reservation(request: web.Request, limit: int) -> int:
    """Bytes a request's body may hold in the server's memory budget, reserved before it is
    read (as service/grpc/budget.py does for gRPC messages): the declared length, else the
    message limit, times the copies a request makes on its way through."""
    if request.method not in ("POST", "PUT"):
        return 0
    declared = request.content_length
    return (limit if declared is None else min(declared, limit)) * MESSAGE_COPIES


def make_app(servicer: InferenceServicer, metrics: Metrics, token: str | None) -> web.Application:
    settings = servicer.core.settings
    memory = servicer.core.memory
    exempt = EXEMPT_PATHS | page.PATHS if settings.http_ui else EXEMPT_PATHS
    bearer = BearerToken(token, exempt) if token else None

    async def handle(request: web.Request, handler: web.Handler, route: str) -> web.StreamResponse:
        """The route, within the memory budget; domain and HTTP errors as JSON."""
        nbytes = body_reservation(request, settings.message_limit)
        if nbytes and not memory.try_reserve(nbytes):
            error = MemoryExhausted(
                "server memory budget exhausted by requests in flight; retry later"
            )
            servicer.core.reject(error)
            memory.trim_soon()
            return domain_error_response(error)
        try:
            return await handler(request)
        except ImgclfError as exc:
            return domain_error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # our own texts, or aiohttp's reason ("Not Found") for its default "404: ..."
            own_text = exc.text and not exc.text.startswith(str(exc.status))
            message = exc.text if own_text else exc.reason
            kept = {k: v for k, v in exc.headers.items() if k.lower() in KEPT_HEADERS}
            return error_response(exc.status, message, kept)
        except Exception:
            log.exception("HTTP %s failed unexpectedly", route)
            return internal_error_response()
        finally:
            if nbytes:
                memory.release(nbytes)

    @web.middleware
    async def shared(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if bearer is not None and not bearer.allows(
            request.path, request.headers.get("Authorization")
        ):
            log.warning("refused HTTP %s: missing or wrong bearer token", request.path)
            response: web.StreamResponse = error_response(
                401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"}
            )
        else:
            response = await handle(request, handler, route)
        metrics.http_requests.labels(route, str(response.status)).inc()
        return response

    app = web.Application(middlewares=[shared], client_max_size=settings.message_limit)
    oip = OipRoutes(servicer)
    app.add_routes(oip.routes())
    app.add_routes(ClassifyRoutes(servicer.core).routes())
    if settings.http_ui:
        app.add_routes(page.routes())
    document = openapi_document(servicer.version, ui=settings.http_ui)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(document)

    app.router.add_get("/openapi.json", openapi)
    return app


class HttpServer:
    """The HTTP listener's lifecycle."""

    def __init__(self, servicer: InferenceServicer, metrics: Metrics, token: str | None) -> None:
        self.settings = servicer.core.settings
        self.app = make_app(servicer, metrics, token)
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        s = self.settings
        ssl_context = None
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            ssl_context = server_ssl_context(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=s.grace_period_s,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, s.http_bind, s.http_port, ssl_context=ssl_context, reuse_port=False
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the port 0 picked
        return self.port

    async def stop(self) -> None:
        """Stop listening; requests already received finish (up to the grace period)."""
        if self._runner is not None:
            await self._runner.cleanup()
