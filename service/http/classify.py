"""The plain image endpoint for people: POST a photo, get the top-k labels as JSON.

    curl -T chelsea.jpg http://127.0.0.1:8000/v1/models/efficientnet_lite0/classify
    curl --data-binary @chelsea.jpg 'http://127.0.0.1:8000/v1/classify?top_k=3'
    curl -F image=@chelsea.jpg -F image=@coffee.jpg http://127.0.0.1:8000/v1/classify

The body is one encoded image, or a multipart form whose file parts are the images (in
order). No model named: the default model. Same core call as the gRPC Classify RPC.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from imgclf.dataplane import ClassifyResult, Core, ImageInput
from imgclf.errors import ImgclfError, InvalidInput
from imgclf.grpc.inference import parse_version
from imgclf.http.body import read_body, too_large


def result_json(result: ClassifyResult, names: list[str]) -> dict[str, Any]:
    return {
        "model": result.model,
        "version": result.version,
        "results": [
            {
                "image": name,
                "predictions": [
                    {"label": c.label, "index": c.index, "probability": round(c.probability, 6)}
                    for c in r.top
                ],
            }
            for name, r in zip(names, result.results, strict=True)
        ],
    }


class ClassifyRoutes:
    def __init__(self, core: Core) -> None:
        self.core = core

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/classify", self.classify),
            web.post("/v1/models/{model}/classify", self.classify),
            web.post("/v1/models/{model}/versions/{version}/classify", self.classify),
            web.put("/v1/classify", self.classify),  # curl -T sends PUT
            web.put("/v1/models/{model}/classify", self.classify),
            web.put("/v1/models/{model}/versions/{version}/classify", self.classify),
            web.get("/v1/models", self.models),
        ]

    async def models(self, request: web.Request) -> web.Response:
        doc = {
            "models": [
                {"name": name, "versions": sorted(versions, reverse=True)}
                for name, versions in sorted(self.core.manager.serving.items())
            ]
        }
        return web.Response(body=json.dumps(doc).encode(), content_type="application/json")

    async def _multipart(self, request: web.Request) -> tuple[list[bytes], list[str]]:
        """The file parts of a form (any field name), within the size and count limits."""
        settings = self.core.settings
        limit, budget = settings.message_limit, settings.message_limit
        images: list[bytes] = []
        names: list[str] = []
        reader = await request.multipart()
        while True:
            part = await asyncio.wait_for(reader.next(), settings.http_read_timeout_s)
            if part is None:
                return images, names
            if not hasattr(part, "read_chunk") or part.filename is None:
                continue  # a plain form field (or nested multipart): not an image
            if len(images) == settings.max_images_per_request:
                images.append(b"")  # the count check below refuses the request
                names.append(part.filename)
                return images, names
            chunks = []
            while chunk := await asyncio.wait_for(part.read_chunk(), settings.http_read_timeout_s):
                budget -= len(chunk)
                if budget < 0:
                    raise too_large(limit - budget, limit)
                chunks.append(chunk)
            images.append(b"".join(chunks))
            names.append(part.filename)

    async def classify(self, request: web.Request) -> web.Response:
        try:
            top = request.query.get("top_k", "0")
            try:
                top_k = int(top)
            except ValueError:
                raise InvalidInput(
                    f"top_k must be an integer, got {top!r}", reason="bad_top_k"
                ) from None
            version = parse_version(request.match_info.get("version", ""))
            if request.content_type.startswith("multipart/"):
                images, names = await self._multipart(request)
            else:
                images, names = [await read_body(request, self.core.settings)], ["body"]
        except ImgclfError as exc:
            self.core.reject(exc)
            raise
        result = await self.core.classify(
            request.match_info.get("model", ""),
            [ImageInput(encoded=data) for data in images],
            top=top_k,
            version=version,
            count=len(images),
        )
        doc = result_json(result, names)
        return web.Response(body=json.dumps(doc).encode(), content_type="application/json")
