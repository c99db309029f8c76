"""The protobuf range: stated once, accepted by the stubs, and a mismatch said in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import runtime_version

from imgclf.protoversion import SUPPORTED, describe, is_version_error

REPO_ROOT = Path(__file__).resolve().parents[3]
GENERATED = REPO_ROOT / "service" / "_generated"


def _requirement(name: str) -> str:
    """The version range of `name` in the serving dependencies (tomllib is 3.11+)."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    deps = text[text.index("dependencies = [") : text.index("[project.optional-dependencies]")]
    (spec,) = re.findall(rf'^\s*"{name}([^"]*)"', deps, flags=re.MULTILINE)
    return spec


def test_pyproject_states_the_supported_range() -> None:
    assert _requirement("protobuf") == SUPPORTED


def test_stub_gencode_is_within_the_range() -> None:
    """Every committed stub demands a runtime no newer than the floor of the range."""
    floor = tuple(int(p) for p in re.search(r">=([\d.]+)", SUPPORTED)[1].split("."))
    stubs = sorted(GENERATED.rglob("*_pb2.py"))
    assert stubs
    for stub in stubs:
        version = re.search(r"# Protobuf Python Version: ([\d.]+)", stub.read_text())[1]
        assert tuple(int(p) for p in version.split(".")) <= floor, (stub, version)


def test_the_installed_runtime_is_within_the_range() -> None:
    import google.protobuf

    major = int(google.protobuf.__version__.split(".")[0])
    assert 6 <= major < 8, google.protobuf.__version__


def _version_error() -> Exception:
    with pytest.raises(runtime_version.VersionError) as info:
        runtime_version.ValidateProtobufRuntimeVersion(
            runtime_version.Domain.PUBLIC, runtime_version.MAJOR + 1, 0, 0, "", "x/y.proto"
        )
    return info.value


def test_a_real_version_error_is_one_line_naming_both_versions() -> None:
    exc = _version_error()
    assert is_version_error(exc)
    line, hint = describe(exc)
    runtime = f"{runtime_version.MAJOR}.{runtime_version.MINOR}.{runtime_version.PATCH}"
    assert line == (
        f"protobuf {runtime} is installed, but x/y.proto was generated for protobuf "
        f"{runtime_version.MAJOR + 1}.0.0 or newer"
    )
    assert f"protobuf{SUPPORTED}" in hint and "pip check" in hint
    assert "\n" not in line + hint


def test_other_errors_are_not_version_errors() -> None:
    assert not is_version_error(ValueError("gencode 1 runtime 2"))


def test_cli_says_a_stub_mismatch_in_one_line() -> None:
    """The real stubs imported by the real CLI under a runtime older than their gencode."""
    code = (
        "from google.protobuf import runtime_version as r\n"
        "r.MAJOR, r.MINOR, r.PATCH = 6, 29, 0\n"
        "from imgclf.cli import main\n"
        "raise SystemExit(main(['served-models', '--server', '127.0.0.1:1']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert re.fullmatch(
        r"imgclf served-models: protobuf 6\.29\.0 is installed, but \S+\.proto was generated "
        r"for protobuf 6\.30\.0 or newer",
        lines[0],
    ), lines
    assert lines[1].startswith(f"  hint: imgclf runs on protobuf{SUPPORTED}; ")
    assert len(lines) == 2
