"""The page at / (service/http/page.py) in the real aiohttp application, on a fake core: served
or not (`--http-ui`), its files without the token while the API still needs it, and nothing
in it that loads from elsewhere. tests/integration/test_http_page.py drives it in Chromium."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from types import SimpleNamespace

from aiohttp.test_utils import TestClient, TestServer

from imgclf.budget import MemoryBudget
from imgclf.http import page
from imgclf.http.app import make_app
from imgclf.metrics.prometheus import Metrics
from imgclf.settings import ServerSettings

TOKEN = "s3cret"


def get(ui: bool, token: str | None, path: str, auth: str | None = None) -> tuple[int, str, dict]:
    """GET `path` from the application: status, body text, headers."""
    settings = ServerSettings(http_ui=ui)
    core = SimpleNamespace(
        settings=settings, manager=None, memory=MemoryBudget(settings.memory_budget_bytes)
    )
    app = make_app(SimpleNamespace(core=core, version="0"), Metrics(), token)  # type: ignore[arg-type]

    async def run() -> tuple[int, str, dict]:
        async with TestClient(TestServer(app)) as client:
            headers = {"Authorization": auth} if auth else {}
            reply = await client.get(path, headers=headers)
            return reply.status, await reply.text(), dict(reply.headers)

    return asyncio.run(run())


def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    status, text, headers = get(True, None, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<script src="ui/app.js"' in text
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path, kind in (("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        status, text, headers = get(True, None, path)
        assert status == 200 and headers["Content-Type"].startswith(kind), path
        assert text == (resources.files("imgclf.http") / "ui" / path.split("/")[-1]).read_text()


def test_turned_off_the_page_is_not_found() -> None:
    for path in page.PATHS:
        status, text, _ = get(False, None, path)
        assert status == 404 and '"error"' in text, path


def test_with_a_token_the_page_needs_none_but_every_api_call_does() -> None:
    assert get(True, TOKEN, "/")[0] == 200
    assert get(True, TOKEN, "/ui/app.js")[0] == 200
    status, text, headers = get(True, TOKEN, "/openapi.json")
    assert status == 401 and "bearer token" in text and headers["WWW-Authenticate"] == "Bearer"
    assert get(True, TOKEN, "/openapi.json", f"Bearer {TOKEN}")[0] == 200
    # turned off, its paths are no longer exempt: refused without the token, 404 with it
    assert get(False, TOKEN, "/")[0] == 401
    assert get(False, TOKEN, "/", f"Bearer {TOKEN}")[0] == 404


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No URL with a scheme or host (CDN, web font), no CSS import: the page works offline."""
    folder = resources.files("imgclf.http") / "ui"
    for name, _ in page.FILES.values():
        text = (folder / name).read_text()
        assert not re.search(r"(?i)\b(?:https?|ftp|wss?):", text), name
        assert "@import" not in text and "url(" not in text, name
        for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
            assert ref.startswith(("ui/", "data:")), (name, ref)
