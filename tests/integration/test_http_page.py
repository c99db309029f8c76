"""The page at / of the HTTP port (service/http/page.py), driven in a real headless Chromium
(Debian's `chromium` and `chromium-driver`, through selenium and the system chromedriver)
against a real server on the bundled models: a real photo uploaded through the file input,
the top label shown, the class map drawn over the photo (none for a model whose head has no
maps), the server's errors in words, the token field, and `--no-http-ui`.

IMGCLF_UI_SCREENSHOT=docs/img/ui.png writes the README's screenshot from the upload test.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgclf.client.bench.launcher import ServerProcess, start_server
from tests.conftest import BUNDLED_MODELS, require_executable, tool_missing
from tests.tiny_model import make_tiny_model

MODEL = "efficientnet_lite0"
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
WAIT_S = 60.0
SCREENSHOT = "IMGCLF_UI_SCREENSHOT"
TOKEN = "page-s3cret"
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--window-size=1180,760", "--hide-scrollbars", "--force-device-scale-factor=1",
)  # fmt: skip

OVERLAY_ALPHA = """
const c = document.getElementById(arguments[0]);
const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
const columns = new Array(c.width).fill(0);
const alpha = new Array(c.width).fill(0);
for (let i = 3; i < d.length; i += 4) {
  const x = ((i - 3) / 4) % c.width;
  if (d[i] > 0) columns[x]++;
  alpha[x] += d[i];
}
return {width: c.width, height: c.height, columns: columns, alpha: alpha};
"""
"""Per column of a canvas: how many of its pixels are not transparent, and their alpha's sum."""

DROP = """
const data = new DataTransfer();
data.items.add(new File([arguments[1]], arguments[0], {type: "text/plain"}));
document.getElementById("drop").dispatchEvent(
  new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
"""
"""Drop a file (name, text) on the page's drop zone, as a drag from the desktop does."""


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium through the system chromedriver (never a downloaded driver); session
    scope, so that a missing tool skips before the servers start."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        tool_missing(f"selenium cannot be imported ({exc}): pip install selenium")
    chromium = require_executable("chromium")
    driver_path = require_executable("chromedriver", "/usr/bin/chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def chelsea(photos: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "chelsea.jpg"
    path.write_bytes(photos["chelsea"])
    return path


def wait_state(driver: Any, *states: str) -> str:
    """Wait until the page's body[data-state] is one of `states`; returns it."""
    from selenium.webdriver.support.ui import WebDriverWait

    def reached(d: Any) -> str | bool:
        state = d.find_element("tag name", "body").get_attribute("data-state")
        return state if state in states else False

    return str(WebDriverWait(driver, WAIT_S).until(reached))


def open_page(driver: Any, server: ServerProcess) -> str:
    driver.get(server.http_url + "/")
    return wait_state(driver, "ready", "error")


def upload(driver: Any, path: Path) -> str:
    driver.find_element("id", "file").send_keys(str(path))
    return wait_state(driver, "done", "error")


def choose(driver: Any, element_id: str, value: str) -> None:
    """Pick an option of a <select>, as a click does (its change event fires)."""
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", element_id)).select_by_value(value)


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def labels_shown(driver: Any) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", "#bars .label")]


def alpha_columns(driver: Any, canvas: str) -> dict[str, Any]:
    return dict(driver.execute_script(OVERLAY_ALPHA, canvas))


def explained(server: ServerProcess, photo: Path) -> dict[str, Any]:
    """The server's own answer for the photo, asked directly (the map box to check against)."""
    url = f"{server.http_url}/v1/models/{MODEL}/classify?top_k=3&explain=3"
    request = urllib.request.Request(url, data=photo.read_bytes(), method="POST")
    with urllib.request.urlopen(request, timeout=WAIT_S) as reply:
        return dict(json.loads(reply.read())["results"][0])


def test_a_photo_gets_its_label_and_its_map_over_it(
    browser: Any, bundled_server: ServerProcess, chelsea: Path, tmp_path: Path
) -> None:
    assert open_page(browser, bundled_server) == "ready"
    choose(browser, "model", MODEL)
    assert upload(browser, chelsea) == "done", text_of(browser, "error")
    labels = labels_shown(browser)
    assert len(labels) == 3 and labels[0] in CAT_CLASSES, labels
    assert MODEL in text_of(browser, "status")

    photo = alpha_columns(browser, "photo")
    assert min(photo["columns"]) == photo["height"], "the photo is not drawn on its canvas"
    overlay = alpha_columns(browser, "overlay")
    assert (overlay["width"], overlay["height"]) == (photo["width"], photo["height"])
    drawn = sum(overlay["columns"])
    assert drawn > 0.05 * overlay["width"] * overlay["height"], "no heatmap on the overlay"
    # the map covers the crop box only: the columns left and right of it stay transparent
    result = explained(bundled_server, chelsea)
    left, _, right, _ = result["maps"][0]["box"]
    scale = overlay["width"] / result["width"]
    assert left > 10, result["maps"][0]["box"]  # chelsea is wider than tall: a centre crop
    assert sum(overlay["columns"][: int(left * scale) - 1]) == 0
    assert sum(overlay["columns"][int(right * scale) + 2 :]) == 0
    # and it is the server's map, the right way round: the strongest columns coincide
    cells = [
        sum(row[j] for row in result["maps"][0]["map"])
        for j in range(len(result["maps"][0]["map"][0]))
    ]
    cell = (right - left) * scale / len(cells)
    strongest = max(range(len(cells)), key=cells.__getitem__)
    peak = max(range(overlay["width"]), key=overlay["alpha"].__getitem__)
    assert abs(peak - (left * scale + (strongest + 0.5) * cell)) <= 1.5 * cell, (peak, cells)
    screenshot(browser, tmp_path)

    # another class: its own map; the same class again: the map hidden
    buttons = browser.find_elements("css selector", "#bars button")
    assert buttons[0].get_attribute("aria-pressed") == "true"
    buttons[1].click()
    assert buttons[1].get_attribute("aria-pressed") == "true"
    second = alpha_columns(browser, "overlay")
    assert sum(second["columns"]) > 0 and second["alpha"] != overlay["alpha"]
    buttons[1].click()
    assert sum(alpha_columns(browser, "overlay")["columns"]) == 0


def screenshot(driver: Any, tmp_path: Path) -> None:
    """The page as it looks now; copied to $IMGCLF_UI_SCREENSHOT when that is set."""
    path = tmp_path / "ui.png"
    assert driver.save_screenshot(str(path))
    if target := os.environ.get(SCREENSHOT):
        shutil.copyfile(path, target)


def test_a_file_that_is_not_an_image_gets_the_servers_error_in_words(
    browser: Any, bundled_server: ServerProcess, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not the pixels you are looking for\n")
    assert open_page(browser, bundled_server) == "ready"
    assert upload(browser, notes) == "error"
    message = text_of(browser, "error")
    assert "400" in message and "not a decodable image" in message, message
    assert not browser.find_element("id", "result").is_displayed()
    # the same through the drop zone
    assert open_page(browser, bundled_server) == "ready"
    browser.execute_script(DROP, "notes.txt", notes.read_text())
    assert wait_state(browser, "done", "error") == "error"
    assert "not a decodable image" in text_of(browser, "error")


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("page-token-server")
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    server = start_server(BUNDLED_MODELS, workdir, "--auth-token-file", str(token_file))
    yield server
    server.stop()


def test_with_a_token_the_page_says_so_and_works_once_it_is_given(
    browser: Any, token_server: ServerProcess, chelsea: Path
) -> None:
    assert open_page(browser, token_server) == "error"  # the page loads; the model list: 401
    message = text_of(browser, "error")
    assert "401" in message and "no token was given" in message, message
    field = browser.find_element("id", "token")
    field.send_keys("wrong\t")  # the tab commits the field (change event)
    assert wait_state(browser, "ready", "error") == "error"
    assert "the token given was refused" in text_of(browser, "error")
    field.clear()
    field.send_keys(TOKEN + "\t")
    assert wait_state(browser, "ready", "error") == "ready", text_of(browser, "error")
    choose(browser, "model", MODEL)
    assert upload(browser, chelsea) == "done", text_of(browser, "error")
    assert labels_shown(browser)[0] in CAT_CLASSES
    # more classes: the photo is sent again with the token, five bars come back
    choose(browser, "topk", "5")
    assert wait_state(browser, "done", "error") == "done", text_of(browser, "error")
    assert len(labels_shown(browser)) == 5


def test_a_model_without_maps_gets_its_bars_and_says_why_there_is_no_map(
    browser: Any, chelsea: Path, tmp_path: Path
) -> None:
    make_tiny_model(tmp_path / "repo" / "flat" / "1" / "model.onnx", head="flatten")
    server = start_server(tmp_path / "repo", tmp_path)
    try:
        assert open_page(browser, server) == "ready"
        assert upload(browser, chelsea) == "done", text_of(browser, "error")
        assert sorted(labels_shown(browser)) == ["blue", "green", "red"]
        assert "flat gives no maps" in text_of(browser, "note")
        assert sum(alpha_columns(browser, "overlay")["alpha"]) == 0
        assert all(
            not b.is_enabled() for b in browser.find_elements("css selector", "#bars button")
        )
    finally:
        server.stop()


def test_no_http_ui_turns_the_page_off(tiny_repo: Path, tmp_path: Path) -> None:
    server = start_server(tiny_repo, tmp_path, "--http-ui", "false")
    try:
        for path, expected in (("/", 404), ("/ui/app.js", 404), ("/v1/models", 200)):
            try:
                with urllib.request.urlopen(server.http_url + path, timeout=WAIT_S) as reply:
                    status = reply.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == expected, path
    finally:
        server.stop()
