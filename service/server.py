"""Server lifecycle: load and warm up, serve gRPC + health + reflection + metrics, drain.

Start: models load and warm up first; only then does health report SERVING.
Stop (SIGTERM/SIGINT): health NOT_SERVING, new requests refused with UNAVAILABLE, in-flight
requests finish within the grace period, queues drain, the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import start_http_server

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf._generated.inference import grpc_service_pb2 as oip_pb
from imgclf._generated.inference import grpc_service_pb2_grpc as oip_grpc
from imgclf.dataplane import Core
from imgclf.grpc.auth import TokenAuthInterceptor, read_token, server_credentials
from imgclf.grpc.classifier import ImageClassifierServicer
from imgclf.grpc.inference import InferenceServicer
from imgclf.grpc.protopool import reflection_pool
from imgclf.grpc.streams import HealthServicer, StreamEnder
from imgclf.metrics.gpu import register_gpu_metrics
from imgclf.metrics.prometheus import Metrics
from imgclf.models.manager import ModelManager
from imgclf.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["ImageClassifier"].full_name,
    oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


KEEPALIVE_TIME_MS = 60_000
"""Ping every connection after this long without traffic, to find peers that vanished."""
KEEPALIVE_TIMEOUT_MS = 20_000
"""A connection whose ping is not answered within this is closed (its calls fail)."""
MAX_CONNECTION_AGE_MS = 3_600_000
"""A connection is asked to go away (GOAWAY) after an hour, so that clients reconnect and
load balancers can spread them again; new calls go to a new connection..."""
MAX_CONNECTION_AGE_GRACE_MS = 300_000
"""...and calls still open on the old one get this long to finish."""


def grpc_server_options(s: ServerSettings) -> list[tuple[str, int]]:
    """The gRPC server's channel options (also used by `imgclf bench --floor`)."""
    idle_ms = round(s.max_connection_idle_s * 1000)
    return [
        *([("grpc.max_connection_idle_ms", idle_ms)] if idle_ms else []),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging idle long-lived streams
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # gRPC core cancels calls the application has not picked up yet beyond these
        # (defaults 1000/3000): a burst should queue and meet our own admission control
        # (RESOURCE_EXHAUSTED with a retry hint), not vanish as CANCELLED.
        ("grpc.server.max_pending_requests", 10_000),
        ("grpc.server.max_pending_requests_hard_limit", 30_000),
    ]


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        register_gpu_metrics(self.metrics.registry)
        self.manager = ModelManager(settings, self.metrics, on_change=self._readiness_changed)
        self.core = Core(settings, self.metrics, self.manager)
        self.streams = StreamEnder()
        self.health = HealthServicer(self.streams)
        self.grpc_port = 0
        self.metrics_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http = None
        self._stopping = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _publish_readiness(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        self.metrics.ready.set(1 if self.core.ready else 0)
        await self._set_health(
            serving if self.core.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    def _readiness_changed(self) -> None:
        """Models came or went: health follows (called on the event loop)."""
        task = asyncio.get_running_loop().create_task(self._publish_readiness())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        s = self.settings
        http, _thread = start_http_server(
            s.metrics_port, addr=s.metrics_bind, registry=self.metrics.registry
        )
        self._http = http
        self.metrics_port = http.server_port
        options = grpc_server_options(s)
        token = read_token(s.auth_token, s.auth_token_file)
        interceptors = [TokenAuthInterceptor(token)] if token else []
        self._grpc = grpc.aio.server(options=options, interceptors=interceptors)
        pb_grpc.add_ImageClassifierServicer_to_server(
            ImageClassifierServicer(self.core), self._grpc
        )
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.core, self.streams), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self._grpc,
            pool=reflection_pool(pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR),
        )
        address = f"{s.host}:{s.grpc_port}"
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            creds = server_credentials(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)
            self.grpc_port = self._grpc.add_secure_port(address, creds)
        else:
            self.grpc_port = self._grpc.add_insecure_port(address)
        if not self.grpc_port:
            raise RuntimeError(f"could not bind gRPC on {s.host}:{s.grpc_port}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._grpc.start()
        security = (
            "mutual TLS" if s.tls_client_ca_file else "TLS" if s.tls_cert_file else "plaintext"
        )
        log.info(
            "listening: gRPC %s:%d (%s%s), metrics http://%s:%d/metrics; loading models from %s",
            s.host, self.grpc_port, security, ", bearer token required" if token else "",
            s.metrics_bind, self.metrics_port, s.model_repository,
        )  # fmt: skip
        await self.manager.start(s.load_model)
        self.core.mark_started()
        await self._publish_readiness()
        log.info(
            "%s: serving %s",
            "ready" if self.core.ready else "NOT ready",
            ", ".join(self.manager.names()) or "no model",
        )

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_and_stop(self) -> None:
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        s = self.settings
        log.info(
            "shutting down: NOT_SERVING, serving on for %.1fs, then draining for up to %.0fs",
            s.pre_drain_delay_s, s.grace_period_s,
        )  # fmt: skip
        self.core.begin_drain()
        self.metrics.ready.set(0)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if s.pre_drain_delay_s:
            await asyncio.sleep(s.pre_drain_delay_s)
        # Long-lived streams (health Watch, ModelStreamInfer) answer what they read and end,
        # or they would hold the stop below for the whole grace period.
        self.streams.end_all()
        # gRPC refuses new calls from here on; every call already received runs to its end.
        if self._grpc is not None:
            await self._grpc.stop(s.grace_period_s)
        # The metrics server notices its shutdown within its 0.5 s poll: meanwhile, not after.
        http_down = (
            asyncio.ensure_future(asyncio.to_thread(self._http.shutdown)) if self._http else None
        )
        await self.core.close()
        if http_down is not None:
            await http_down
        log.info("stopped")


async def serve(settings: ServerSettings) -> None:
    """Run the server until SIGTERM or SIGINT, then drain and return."""
    server = Server(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    await server.wait_and_stop()
