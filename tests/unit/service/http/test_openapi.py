"""The served OpenAPI document describes exactly the application's routes."""

from __future__ import annotations

from types import SimpleNamespace

from imgclf.budget import MemoryBudget
from imgclf.http.app import make_app
from imgclf.http.openapi import openapi_document
from imgclf.metrics.prometheus import Metrics
from imgclf.settings import ServerSettings


def routes(ui: bool = True) -> set[tuple[str, str]]:
    settings = ServerSettings(http_ui=ui)
    core = SimpleNamespace(
        settings=settings, manager=None, memory=MemoryBudget(settings.memory_budget_bytes)
    )
    servicer = SimpleNamespace(core=core, version="0")
    app = make_app(servicer, Metrics(), token=None)  # type: ignore[arg-type]
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD":  # aiohttp adds HEAD beside every GET
            found.add((path, route.method.lower()))
    return found


def test_every_route_is_documented_and_every_documented_path_is_routed() -> None:
    doc = openapi_document("0")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    served = routes()
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "documented paths no route serves"


def test_without_the_page_neither_serves_nor_documents_it() -> None:
    doc = openapi_document("0", ui=False)
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == routes(ui=False)
    assert ("/", "get") not in documented


def test_documented_path_parameters_match_the_template() -> None:
    for path, ops in openapi_document("0")["paths"].items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, op in ops.items():
            in_path = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert in_path == names, (path, method)
            assert "default" in op["responses"] and "200" in op["responses"]
