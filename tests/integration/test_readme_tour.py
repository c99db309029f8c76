"""README.md's tour, run: every code block marked `<!-- tour: NAME -->` is executed as a new
user would (in an empty folder, against a real server started as `make serve` starts it), and
its printed lines are compared with the README's.

Comparison: a README line `...` stands for any lines, `... TEXT` for a line ending in TEXT;
every other line must match the printed line, with decimal numbers (timings, losses,
probabilities) and the `#` bars masked in the classify and training output, and exactly in
`served-models`, `ls` and the metrics.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgclf.client.bench.launcher import ServerProcess, start_server

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
BUNDLED_MODELS = REPO_ROOT / "models"
MAKE_SERVE_ARGS = ("--default-model", "efficientnet_lite0")  # what the Makefile's serve adds
CLIENT_COMMANDS = {"classify", "served-models"}
DECIMAL = re.compile(r"\d+\.\d+(?:e[-+]?\d+)?%?|\d+e[-+]\d+")
BAR = re.compile(r"\s+#+$")

pytestmark = pytest.mark.slow


def tour_blocks() -> dict[str, str]:
    """The README's code blocks marked for the tour, by name."""
    pattern = re.compile(r"<!-- tour: (\w+) -->\n```\w*\n(.*?)\n```", re.DOTALL)
    return {m[1]: m[2] for m in pattern.finditer(README.read_text())}


def console_steps(block: str) -> list[tuple[str, list[str]]]:
    """(command, expected lines) for each `$ ` command of a console block; continuation lines
    joined, trailing comments and blank lines dropped."""
    steps: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.rstrip().endswith("\\"):
                i += 1
                command = command.rstrip()[:-1] + " " + lines[i].strip()
            steps.append((command.split("  #")[0].strip(), []))
        elif line.strip() and steps:
            steps[-1][1].append(line.rstrip())
        i += 1
    return steps


def masked(line: str) -> str:
    return DECIMAL.sub("<n>", BAR.sub("", line.rstrip()))


def assert_printed(expected: list[str], printed: list[str], exact: bool) -> None:
    """`printed` holds `expected` in order, `...` skipping any lines."""
    norm = (lambda s: s.rstrip()) if exact else masked
    got = [norm(line) for line in printed if line.strip()]
    at, skipping = 0, False
    for want in expected:
        if want == "...":
            skipping = True
            continue
        if want.startswith("... "):
            tail = norm(want[4:])
            found = next((j for j in range(at, len(got)) if got[j].endswith(tail)), None)
            assert found is not None, f"no printed line ends with {tail!r}:\n" + "\n".join(got)
            at = found + 1
            continue
        want = norm(want)
        if skipping:
            found = next((j for j in range(at, len(got)) if got[j] == want), None)
            assert found is not None, f"{want!r} not printed:\n" + "\n".join(got)
            at, skipping = found, False
        assert at < len(got) and got[at] == want, (
            f"README says {want!r}, printed {got[at] if at < len(got) else None!r}:\n"
            + "\n".join(got)
        )
        at += 1


@pytest.fixture(scope="module")
def tour_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder with the README's photos in it, made by the README's own command."""
    workdir = tmp_path_factory.mktemp("tour")
    (command,) = [c for c in tour_blocks()["photos"].splitlines() if "python -c" in c]
    args = shlex.split(command)
    assert args[0] == ".venv/bin/python"
    subprocess.run([sys.executable, *args[1:]], cwd=workdir, check=True, timeout=120)
    return workdir


@pytest.fixture(scope="module")
def served(tour_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    steps = console_steps(tour_blocks()["serve"])
    assert steps[0][0] == "make serve"
    server = start_server(BUNDLED_MODELS, tmp_path_factory.mktemp("tour-server"), *MAKE_SERVE_ARGS)
    yield server
    server.stop()


def run_step(command: str, cwd: Path, server: ServerProcess | None) -> list[str]:
    """What a README command prints, run here: `.venv/bin/imgclf` as this interpreter's CLI
    (client commands pointed at the test's server), `ls`, and the metrics scrape."""
    if command.startswith("curl "):
        pattern = re.search(r"grep -E '([^']+)'", command)[1]
        assert server is not None
        with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
            return [line for line in reply.read().decode().splitlines() if re.search(pattern, line)]
    args = shlex.split(command)
    if args[0] == "ls":
        return ["  ".join(sorted(os.listdir(cwd / args[1])))]
    assert args[0] == ".venv/bin/imgclf", command
    args = [sys.executable, "-m", "imgclf.cli", *args[1:]]
    if args[3] in CLIENT_COMMANDS:
        assert server is not None
        args += ["--server", server.target]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout.splitlines()


def test_serve_classify_served_models_and_metrics(served: ServerProcess, tour_dir: Path) -> None:
    (_, log_lines), *steps = console_steps(tour_blocks()["serve"])
    assert_printed(log_lines, served.log().splitlines(), exact=False)
    for command, expected in steps:
        exact = not command.startswith(".venv/bin/imgclf classify")
        assert_printed(expected, run_step(command, tour_dir, served), exact=exact)


@pytest.mark.parametrize("name", ["python", "tritonclient"])
def test_python_snippets(name: str, served: ServerProcess, tour_dir: Path) -> None:
    code = tour_blocks()[name]
    assert "127.0.0.1:8001" in code
    code = code.replace("127.0.0.1:8001", served.target)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tour_dir, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.strip()
    comment = re.search(r"# (\[\[b'.*)", code)
    if comment:  # the README shows the start of what it prints
        assert masked(printed).startswith(masked(comment[1].removesuffix(" ...]]")))
    else:
        assert printed.startswith("[('tiger cat', "), printed


@pytest.mark.timeout(1800)  # three epochs and a dynamo export: minutes on a shared 2-core box
def test_train_and_export(tour_dir: Path) -> None:
    pytest.importorskip("torch")
    for command, expected in console_steps(tour_blocks()["train"]):
        exact = command.startswith("ls ")
        assert_printed(expected, run_step(command, tour_dir, None), exact=exact)
