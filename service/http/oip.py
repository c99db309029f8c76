"""The Open Inference Protocol's HTTP/REST routes (KServe v2 REST, as Triton serves them).

Every route runs the gRPC servicer's own method for the same RPC (one implementation of each;
this module converts JSON and the binary tensor data extension, nothing else).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf.message import Message

from imgclf._generated.inference import grpc_service_pb2 as pb
from imgclf.errors import ImgclfError, InvalidInput
from imgclf.grpc.inference import EXTENSIONS, InferenceServicer
from imgclf.http.body import read_body
from imgclf.http.codec import HEADER_LENGTH, infer_response_body, parse_infer_request
from imgclf.http.jsonify import to_json

HTTP_EXTENSIONS = (*EXTENSIONS, "binary_tensor_data")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(doc).encode(), content_type="application/json"
    )


class OipRoutes:
    def __init__(self, servicer: InferenceServicer) -> None:
        self.servicer = servicer
        self.core = servicer.core

    async def _rpc(self, method: str, request: Message) -> Any:
        """The servicer's method for this RPC, without its gRPC error mapping (the HTTP
        middleware maps the same domain errors to HTTP statuses)."""
        undecorated = getattr(type(self.servicer), method).__wrapped__
        return await undecorated(self.servicer, request, None)

    def routes(self) -> list[web.RouteDef]:
        m, mv = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
        return [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get("/v2/models/stats", self.statistics),
            web.get(m, self.model_metadata),
            web.get(mv, self.model_metadata),
            web.get(f"{m}/ready", self.model_ready),
            web.get(f"{mv}/ready", self.model_ready),
            web.get(f"{m}/config", self.model_config),
            web.get(f"{mv}/config", self.model_config),
            web.get(f"{m}/stats", self.statistics),
            web.get(f"{mv}/stats", self.statistics),
            web.post(f"{m}/infer", self.infer),
            web.post(f"{mv}/infer", self.infer),
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{model}/load", self.load),
            web.post("/v2/repository/models/{model}/unload", self.unload),
            *self._shared_memory_routes("system"),
            *self._shared_memory_routes("cuda"),
        ]

    # ---- shared memory (not supported: answered as service/grpc/shared_memory.py does) ----

    def _shared_memory_routes(self, kind: str) -> list[web.RouteDef]:
        root = f"/v2/{kind}sharedmemory"
        rpc = "SystemSharedMemory" if kind == "system" else "CudaSharedMemory"
        messages = {
            op: getattr(pb, f"{rpc}{op}Request") for op in ("Status", "Register", "Unregister")
        }

        async def status(request: web.Request) -> web.Response:
            name = request.match_info.get("region", "")
            await self._rpc(f"{rpc}Status", messages["Status"](name=name))
            return json_response([])  # no region is ever registered

        async def register(request: web.Request) -> web.Response:
            name = request.match_info["region"]
            await self._rpc(f"{rpc}Register", messages["Register"](name=name))
            return web.Response(status=200)  # not reached: registering is refused

        async def unregister(request: web.Request) -> web.Response:
            name = request.match_info.get("region", "")
            await self._rpc(f"{rpc}Unregister", messages["Unregister"](name=name))
            return web.Response(status=200)

        return [
            web.get(f"{root}/status", status),
            web.get(f"{root}/region/{{region}}/status", status),
            web.post(f"{root}/region/{{region}}/register", register),
            web.post(f"{root}/unregister", unregister),
            web.post(f"{root}/region/{{region}}/unregister", unregister),
        ]

    # ---- health and metadata ----------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.core.ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        reply = await self._rpc("ServerMetadata", pb.ServerMetadataRequest())
        doc = to_json(reply)
        doc["extensions"] = list(HTTP_EXTENSIONS)
        return json_response(doc)

    @staticmethod
    def _name_version(request: web.Request) -> tuple[str, str]:
        return request.match_info["model"], request.match_info.get("version", "")

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = self._name_version(request)
        reply = await self._rpc(
            "ModelMetadata", pb.ModelMetadataRequest(name=name, version=version)
        )
        return json_response(to_json(reply))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = self._name_version(request)
        reply = await self._rpc("ModelReady", pb.ModelReadyRequest(name=name, version=version))
        return web.Response(status=200 if reply.ready else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = self._name_version(request)
        reply = await self._rpc("ModelConfig", pb.ModelConfigRequest(name=name, version=version))
        return json_response(to_json(reply.config))

    async def statistics(self, request: web.Request) -> web.Response:
        name = request.match_info.get("model", "")
        version = request.match_info.get("version", "")
        reply = await self._rpc(
            "ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version)
        )
        return json_response(to_json(reply))

    # ---- repository ---------------------------------------------------------------------

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        body = await read_body(request, self.core.settings)
        if not body.strip():
            return {}
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput(
                "request body is not valid JSON", reason="bad_http_request"
            ) from None
        if not isinstance(doc, dict):
            raise InvalidInput("request body must be a JSON object", reason="bad_http_request")
        return doc

    async def repository_index(self, request: web.Request) -> web.Response:
        doc = await self._json_body(request)
        reply = await self._rpc(
            "RepositoryIndex", pb.RepositoryIndexRequest(ready=bool(doc.get("ready", False)))
        )
        return json_response(to_json(reply)["models"])

    async def load(self, request: web.Request) -> web.Response:
        doc = await self._json_body(request)
        load = pb.RepositoryModelLoadRequest(model_name=request.match_info["model"])
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput("'parameters' must be a JSON object", reason="bad_http_request")
        for key, value in params.items():
            load.parameters[key].string_param = json.dumps(value)
        await self._rpc("RepositoryModelLoad", load)
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        await self._json_body(request)  # parameters (unload_dependents) have no meaning here
        unload = pb.RepositoryModelUnloadRequest(model_name=request.match_info["model"])
        await self._rpc("RepositoryModelUnload", unload)
        return web.Response(status=200)

    # ---- inference ----------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        name, version = self._name_version(request)
        try:
            body = await read_body(request, self.core.settings)
            parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), name, version)
        except ImgclfError as exc:
            self.core.reject(exc)
            raise
        reply = await self.servicer.run(parsed.request, None)
        data, header_length = infer_response_body(reply, parsed)
        if header_length is None:
            return web.Response(body=data, content_type="application/json")
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(header_length)},
        )
