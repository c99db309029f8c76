"""The README's client examples run as written against the real server: tritonclient.grpc,
tritonclient.http and curl (only the address is changed to the test server's ports)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.client.bench.launcher import ServerProcess
from tests.conftest import REPO_ROOT, require_executable

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
README = (REPO_ROOT / "README.md").read_text()


def python_blocks(module: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    return [b for b in blocks if f"import numpy as np, {module} as triton" in b]


def curl_commands() -> list[str]:
    return re.findall(r"^\$ (curl .*/classify.*)$", README, flags=re.MULTILINE)


def on_server(text: str, server: ServerProcess) -> str:
    return text.replace("127.0.0.1:8001", server.target).replace(
        "127.0.0.1:8000", f"127.0.0.1:{server.http_port}"
    )


@pytest.fixture
def workdir(tmp_path: Path, photos: dict[str, bytes]) -> Path:
    (tmp_path / "chelsea.jpg").write_bytes(photos["chelsea"])
    return tmp_path


@pytest.mark.parametrize("module", ["tritonclient.grpc", "tritonclient.http"])
def test_tritonclient_examples(bundled_server: ServerProcess, workdir: Path, module: str) -> None:
    (block,) = python_blocks(module)
    run = subprocess.run([sys.executable, "-c", on_server(block, bundled_server)], cwd=workdir,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    labels = re.findall(r"b'[0-9.]+:\d+:([^']+)'", run.stdout)
    assert len(labels) == 3 and labels[0] in CAT_CLASSES, run.stdout


def test_curl_example(bundled_server: ServerProcess, workdir: Path) -> None:
    curl = require_executable("curl")
    (command,) = curl_commands()
    args = shlex.split(on_server(command, bundled_server))
    run = subprocess.run([curl, *args[1:]], cwd=workdir, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    predictions = doc["results"][0]["predictions"]
    assert doc["model"] == "efficientnet_lite0" and len(predictions) == 3
    assert predictions[0]["label"] in CAT_CLASSES
