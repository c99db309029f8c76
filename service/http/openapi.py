"""The OpenAPI 3 document of the HTTP API, served at GET /openapi.json.

tests/unit/service/http/test_openapi.py checks it against the application's routes, both ways.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/responses/Error"}
JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}
MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}


def _op(
    summary: str,
    ok: str,
    *,
    params: tuple[dict[str, Any], ...] = (),
    body: dict[str, Any] | None = None,
    ok_content: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": list(params),
        "responses": {"200": {"description": ok}, "default": ERROR},
    }
    if ok_content is not None:
        op["responses"]["200"]["content"] = ok_content
    if body is not None:
        op["requestBody"] = body
    return op


INFER_BODY = {
    "description": "Open Inference request: JSON, or JSON followed by binary tensor data "
    "(header Inference-Header-Content-Length: the JSON's length; each input with parameter "
    "binary_data_size takes that many bytes, in input order).",
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
IMAGE_BODY = {
    "description": "One encoded image (JPEG, PNG, WebP, ...), or a multipart form whose file "
    "parts are the images.",
    "required": True,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object"}},
    },
}
TOP_K = {"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer"}}
EXPLAIN = (
    {
        "name": "explain",
        "in": "query",
        "required": False,
        "description": "Class activation maps of each image's top N classes (per map: index, "
        "label, probability, box [left, top, right, bottom] in the image's pixels, map: rows "
        "of values in [0, 1]; per image: width, height). 400 for a model whose head is not "
        "global pooling + one linear layer, or more maps than --max-explain-classes.",
        "schema": {"type": "integer", "minimum": 1},
    },
    {
        "name": "explain_class",
        "in": "query",
        "required": False,
        "description": "Or the maps of these class indices (repeat the parameter).",
        "schema": {"type": "array", "items": {"type": "integer"}},
        "style": "form",
        "explode": True,
    },
    {
        "name": "format",
        "in": "query",
        "required": False,
        "description": "png: one image in, the photo with the map of its first explained "
        "class (top 1 unless explain or explain_class says) blended over it, as image/png.",
        "schema": {"type": "string", "enum": ["json", "png"], "default": "json"},
    },
)
CLASSIFY_CONTENT = {
    **JSON_OBJECT,
    "image/png": {"schema": {"type": "string", "format": "binary"}},
}


def _classify(params: tuple[dict[str, Any], ...], what: str) -> dict[str, Any]:
    summary = (
        f"Classify the posted image(s) with {what}; top_k labels with probabilities, and "
        "class activation maps on request"
    )
    op = _op(
        summary,
        "model, version, and per image the predictions (and maps); or the overlay PNG",
        params=(*params, TOP_K, *EXPLAIN),
        body=IMAGE_BODY,
        ok_content=CLASSIFY_CONTENT,
    )
    return {"post": op, "put": {**op, "summary": summary + " (curl -T)"}}


def _versioned(path: str, method: str, summary: str, ok: str, **kw: Any) -> dict[str, Any]:
    """The same operation at /v2/models/{model}PATH and /v2/models/{model}/versions/{v}PATH."""
    return {
        f"/v2/models/{{model}}{path}": {method: _op(summary, ok, params=(MODEL,), **kw)},
        f"/v2/models/{{model}}/versions/{{version}}{path}": {
            method: _op(summary + " (one version)", ok, params=(MODEL, VERSION), **kw)
        },
    }


REGION = {"name": "region", "in": "path", "required": True, "schema": {"type": "string"}}


def _shared_memory(kind: str) -> dict[str, Any]:
    """Triton's shared-memory routes: no region is ever registered (tensors travel in the
    request); status lists none, unregistering succeeds, registering answers 501."""
    root, what = f"/v2/{kind}sharedmemory", f"{kind} shared memory"
    status = _op(f"Regions of {what} (always none)", "[]", ok_content=JSON_OBJECT)
    unregister = _op(f"Unregister {what} (nothing is registered: succeeds)", "done")
    return {
        f"{root}/status": {"get": status},
        f"{root}/region/{{region}}/status": {"get": {**status, "parameters": [REGION]}},
        f"{root}/region/{{region}}/register": {
            "post": _op(f"Register {what}: not supported (501)", "never", params=(REGION,))
        },
        f"{root}/unregister": {"post": unregister},
        f"{root}/region/{{region}}/unregister": {"post": {**unregister, "parameters": [REGION]}},
    }


def _page() -> dict[str, Any]:
    """The page's static files (`--http-ui`): no token needed, they hold no data."""
    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/": {
            "get": _op("The page: a browser UI over this API (no token)", "HTML", ok_content=html)
        },
        "/ui/app.js": {"get": _op("The page's script (no token)", "JavaScript")},
        "/ui/style.css": {"get": _op("The page's style sheet (no token)", "CSS")},
    }


def openapi_document(version: str, ui: bool = True) -> dict[str, Any]:
    """The document; `ui`: the page's routes are served (`--http-ui`)."""
    paths: dict[str, Any] = {
        **(_page() if ui else {}),
        "/v2/health/live": {"get": _op("Server liveness (no token needed)", "live")},
        "/v2/health/ready": {
            "get": _op("Server readiness (503 when not ready; no token)", "ready")
        },
        "/v2": {"get": _op("Server metadata and extensions", "metadata", ok_content=JSON_OBJECT)},
        "/v2/models/stats": {
            "get": _op("Statistics of every model", "statistics", ok_content=JSON_OBJECT)
        },
        **_versioned("", "get", "Model metadata", "metadata", ok_content=JSON_OBJECT),
        **_versioned("/ready", "get", "Model readiness (503 when not ready)", "ready"),
        **_versioned(
            "/config",
            "get",
            "Triton-shaped model configuration",
            "configuration",
            ok_content=JSON_OBJECT,
        ),
        **_versioned("/stats", "get", "Model statistics", "statistics", ok_content=JSON_OBJECT),
        **_versioned(
            "/infer",
            "post",
            "Inference (JSON or binary tensor data)",
            "outputs",
            body=INFER_BODY,
            ok_content=INFER_BODY["content"],
        ),
        "/v2/repository/index": {
            "post": _op(
                'Repository index (body {"ready": true} for ready models only)',
                "models with state",
                ok_content=JSON_OBJECT,
            )
        },
        "/v2/repository/models/{model}/load": {
            "post": _op("Load a model (explicit control mode)", "loaded", params=(MODEL,))
        },
        "/v2/repository/models/{model}/unload": {
            "post": _op("Unload a model (explicit control mode)", "unloaded", params=(MODEL,))
        },
        **_shared_memory("system"),
        **_shared_memory("cuda"),
        "/v1/models": {
            "get": _op(
                "Models served: versions, number of labels, whether they give class "
                "activation maps (explain)",
                "models",
                ok_content=JSON_OBJECT,
            )
        },
        "/v1/classify": _classify((), "the default model"),
        "/v1/models/{model}/classify": _classify((MODEL,), "the named model"),
        "/v1/models/{model}/versions/{version}/classify": _classify(
            (MODEL, VERSION), "one version of the named model"
        ),
        "/openapi.json": {"get": _op("This document", "OpenAPI 3", ok_content=JSON_OBJECT)},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "imgclf HTTP API",
            "version": version,
            "description": "The Open Inference Protocol (KServe v2 REST, Triton's binary "
            "tensor data, classification, statistics and repository extensions) and a plain "
            'image classification endpoint. Errors: {"error": message} with 400 (bad '
            "input), 401 (token), 404 (unknown model), 408 (body too slow), 413 (body too "
            "large), 429 + Retry-After (queue full), 500, 501 (not supported), 503 (not "
            "ready), 504 (deadline).",
        },
        "paths": paths,
        "components": {
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"error": {"type": "string"}},
                                "required": ["error"],
                            }
                        }
                    },
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
