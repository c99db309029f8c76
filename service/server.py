"""Server lifecycle: load and warm up, serve gRPC + HTTP + health + reflection + metrics, drain.

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
from imgclf.budget import configure_allocator
from imgclf.dataplane import Core
from imgclf.grpc.auth import TokenAuthInterceptor, read_token, server_credentials
from imgclf.grpc.budget import MessageBudgetInterceptor
from imgclf.grpc.classifier import ImageClassifierServicer
from imgclf.grpc.inference import InferenceServicer
from imgclf.grpc.options import server_options
from imgclf.grpc.protopool import reflection_pool
from imgclf.grpc.streams import HealthServicer, StreamEnder
from imgclf.http.app import HttpServer
from imgclf.metrics.gpu import register_gpu_metrics
from imgclf.metrics.prometheus import Metrics
from imgclf.models.manager import ModelManager
from imgclf.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["ImageClassifier"].full_name,
    oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


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
        self.http_port = 0
        self._rest: HttpServer | None = None
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
        try:
            http, _thread = start_http_server(
                s.metrics_port, addr=s.metrics_bind, registry=self.metrics.registry
            )
        except OSError as exc:
            raise RuntimeError(
                f"could not bind metrics on {s.metrics_bind}:{s.metrics_port} ({exc.strerror}); "
                "pass another --metrics-port (0 picks a free one)"
            ) from exc
        self._http = http
        self.metrics_port = http.server_port
        options = server_options(s)
        token = read_token(s.auth_token, s.auth_token_file)
        # Authentication first: an unauthenticated call is refused before its message is read.
        interceptors: list[grpc.aio.ServerInterceptor] = (
            [TokenAuthInterceptor(token)] if token else []
        )
        interceptors.append(
            MessageBudgetInterceptor(self.core.memory, s.message_limit, self.core.reject)
        )
        self._grpc = grpc.aio.server(options=options, interceptors=interceptors)
        pb_grpc.add_ImageClassifierServicer_to_server(
            ImageClassifierServicer(self.core), self._grpc
        )
        inference = InferenceServicer(self.core, self.streams)
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(inference, self._grpc)
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
            raise RuntimeError(
                f"could not bind gRPC on {s.host}:{s.grpc_port} (in use?); "
                "pass another --grpc-port (0 picks a free one)"
            )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._grpc.start()
        if s.http:  # same loop, same core; readiness answers 503 until the models are ready
            self._rest = HttpServer(inference, self.metrics, token)
            self.http_port = await self._rest.start()
        security = (
            "mutual TLS" if s.tls_client_ca_file else "TLS" if s.tls_cert_file else "plaintext"
        )
        http = f"HTTP {s.http_bind}:{self.http_port}" if self._rest else "HTTP off"
        log.info(
            "listening: gRPC %s:%d, %s (%s%s), metrics http://%s:%d/metrics; loading models "
            "from %s",
            s.host, self.grpc_port, http, security, ", bearer token required" if token else "",
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
        # gRPC and HTTP refuse new calls from here on; every call already received runs to
        # its end.
        stopping = []
        if self._grpc is not None:
            stopping.append(self._grpc.stop(s.grace_period_s))
        if self._rest is not None:
            stopping.append(self._rest.stop())
        # The metrics server notices its shutdown within its 0.5 s poll: meanwhile, not after.
        http_down = (
            asyncio.ensure_future(asyncio.to_thread(self._http.shutdown)) if self._http else None
        )
        await asyncio.gather(*stopping)
        await self.core.close()
        if http_down is not None:
            await http_down
        log.info("stopped")


async def serve(settings: ServerSettings) -> None:
    """Run the server until SIGTERM or SIGINT, then drain and return."""
    configure_allocator()
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
