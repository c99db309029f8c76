"""The plain image endpoint for people: POST a photo, get the top-k labels as JSON.

    curl -T chelsea.jpg http://127.0.0.1:8000/v1/models/efficientnet_lite0/classify
    curl --data-binary @chelsea.jpg 'http://127.0.0.1:8000/v1/classify?top_k=3'
    curl -F image=@chelsea.jpg -F image=@coffee.jpg http://127.0.0.1:8000/v1/classify

The body is one encoded image, or a multipart form whose file parts are the images (in
order). No model named: the default model. Same core call as the gRPC Classify RPC.

`?explain=N` adds the class activation maps of each image's top N classes (`?explain_class=I`,
repeated: of those classes) to the JSON; `&format=png` answers the (single) photo with the map
of the first explained class blended over it instead (imgclf.overlay).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from aiohttp import web

from imgclf.dataplane import Classification, ClassifyResult, Core, ImageInput
from imgclf.errors import ImgclfError, InvalidInput
from imgclf.explain import NO_EXPLAIN, ExplainRequest
from imgclf.grpc.inference import parse_version
from imgclf.http.body import read_body, too_large
from imgclf.imaging import decode_image
from imgclf.overlay import MAX_SIDE, Heat, fitted, overlay, png_bytes


def result_json(result: ClassifyResult, names: list[str]) -> dict[str, Any]:
    return {
        "model": result.model,
        "version": result.version,
        "results": [image_json(name, r) for name, r in zip(names, result.results, strict=True)],
    }


def image_json(name: str, r: Classification) -> dict[str, Any]:
    """One image's predictions, and its maps when it was explained."""
    doc: dict[str, Any] = {
        "image": name,
        "predictions": [
            {"label": c.label, "index": c.index, "probability": round(c.probability, 6)}
            for c in r.top
        ],
    }
    if r.explanation is not None:
        doc["width"], doc["height"] = r.explanation.width, r.explanation.height
        doc["maps"] = [
            {
                "index": m.index,
                "label": m.label,
                "probability": round(m.probability, 6),
                "box": [round(v, 3) for v in m.box],
                "map": np.round(m.values, 6).tolist(),
            }
            for m in r.explanation.maps
        ]
    return doc


def integer(name: str, value: str, reason: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {value!r}", reason=reason) from None


def explain_request(request: web.Request) -> ExplainRequest:
    """?explain=N (maps of the top N classes) or ?explain_class=I (repeated)."""
    top = integer("explain", request.query.get("explain", "0"), "bad_explain")
    classes = tuple(
        integer("explain_class", v, "bad_explain")
        for v in request.query.getall("explain_class", [])
    )
    if top and classes:
        raise InvalidInput("set explain or explain_class, not both", reason="bad_explain")
    if top < 0:
        raise InvalidInput(f"explain must be positive, got {top}", reason="bad_explain")
    return ExplainRequest(top, classes) if top or classes else NO_EXPLAIN


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
                {
                    "name": name,
                    "versions": sorted(versions, reverse=True),
                    "explain": versions[max(versions)].explaining.head is not None,
                    "labels_count": versions[max(versions)].num_classes,
                }
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
            top_k = integer("top_k", request.query.get("top_k", "0"), "bad_top_k")
            explain = explain_request(request)
            answer_format = request.query.get("format", "json")
            if answer_format not in ("json", "png"):
                raise InvalidInput("format must be json or png", reason="bad_format")
            png = answer_format == "png"
            if png and not explain.wanted:
                explain = ExplainRequest(top_k=1)
            version = parse_version(request.match_info.get("version", ""))
            if request.content_type.startswith("multipart/"):
                images, names = await self._multipart(request)
            else:
                images, names = [await read_body(request, self.core.settings)], ["body"]
            if png and len(images) != 1:
                raise InvalidInput("format=png draws one image; send one", reason="bad_format")
        except ImgclfError as exc:
            self.core.reject(exc)
            raise
        result = await self.core.classify(
            request.match_info.get("model", ""),
            [ImageInput(encoded=data) for data in images],
            top=top_k,
            version=version,
            count=len(images),
            explain=explain,
        )
        if png:
            return await self._png(images[0], result)
        doc = result_json(result, names)
        return web.Response(body=json.dumps(doc).encode(), content_type="application/json")

    async def _png(self, data: bytes, result: ClassifyResult) -> web.Response:
        """The photo with the map of its first explained class blended over it."""
        explanation = result.results[0].explanation
        assert explanation is not None and explanation.maps, "explained before"
        first = explanation.maps[0]
        heat = Heat(first.values, first.box, first.label, first.probability)
        memory, max_pixels = self.core.memory, self.core.settings.max_pixels

        def render() -> bytes:
            held = 0

            def hold(nbytes: int) -> None:
                nonlocal held
                memory.reserve(nbytes, "drawing an overlay")
                held = nbytes

            try:
                # Drawn at most MAX_SIDE pixels wide and high (a draft decode gets close).
                photo = decode_image(data, max_pixels, min_shorter_side=MAX_SIDE // 2, hold=hold)
                photo, heats = fitted(photo, [heat], explanation.width)
                return png_bytes(overlay(photo, heats))
            finally:
                if held:
                    memory.release(held)

        body = await asyncio.to_thread(render)
        return web.Response(body=body, content_type="image/png")
