"""A user project with its own `service/` and `training/` packages does not break imgclf.

Before the import name was `imgclf`, such folders on sys.path (the working directory of
`python -m`, or PYTHONPATH) shadowed ours. Here they come first on sys.path and sit in the
working directory, and the console script and a classify against a real server still work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imgclf.client.bench.launcher import ServerProcess
from tests.images import encode

BROKEN = 'raise ImportError("the user project\'s own {name} package was imported")\n'


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    for name in ("service", "training"):
        (tmp_path / name).mkdir()
        for module in ("__init__", "cli", "client", "server", "train"):
            (tmp_path / name / f"{module}.py").write_text(BROKEN.format(name=name))
    return tmp_path


def run_in(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run(
        args, cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def imgclf_script() -> str:
    found = shutil.which("imgclf", path=str(Path(sys.executable).parent))
    assert found, "the imgclf console script is not installed beside this interpreter"
    return found


def test_the_user_packages_are_the_ones_python_finds(user_project: Path) -> None:
    """The set-up is real: `import service` in that project gets the user's package."""
    out = run_in(user_project, sys.executable, "-c", "import service")
    assert "the user project's own service package was imported" in out.stderr


def test_help_and_imports(user_project: Path) -> None:
    out = run_in(user_project, imgclf_script(), "--help")
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout and "bench" in out.stdout
    out = run_in(
        user_project, sys.executable, "-c",
        "import imgclf.cli, imgclf.server, imgclf.client, imgclf.client.bench.cli; print('ok')",
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_classify_against_a_real_server(user_project: Path, tiny_server: ServerProcess) -> None:
    image = user_project / "red.png"
    image.write_bytes(encode(Image.new("RGB", (48, 40), (255, 0, 0)), "PNG"))
    out = run_in(
        user_project, imgclf_script(), "classify", image.name, "--server", tiny_server.target,
        "--model", "tiny", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)["results"]
    assert result["top"], result
