"""The page at `/` of the HTTP port: one static HTML/JS/CSS set (service/http/ui/, package
data), read once when the application is made and served from memory.

The page is a client of the public HTTP API only (`GET /v1/models`, `POST
/v1/models/{model}/classify`); it holds no data, so with a bearer token set its files are
served without one while every API call it makes carries the token typed into it
(SECURITY.md). Its Content-Security-Policy allows nothing but this origin: no external URL
can load, and an injected script cannot run.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

FILES = {
    "/": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/style.css": ("style.css", "text/css"),
}
"""Route -> (file under service/http/ui/, content type)."""

PATHS = frozenset(FILES)
"""The page's routes: exempt from the bearer token when the page is served."""

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def read_files() -> dict[str, tuple[bytes, str]]:
    """Route -> (bytes, content type), from the installed package."""
    folder = resources.files("imgclf.http").joinpath("ui")
    return {
        route: (folder.joinpath(name).read_bytes(), kind) for route, (name, kind) in FILES.items()
    }


def routes() -> list[web.RouteDef]:
    """GET routes serving the page's files."""
    served = read_files()

    def handler(body: bytes, kind: str) -> web.Handler:
        async def get(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)

        return get

    return [web.get(route, handler(body, kind)) for route, (body, kind) in served.items()]
