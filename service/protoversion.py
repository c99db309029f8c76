"""The protobuf runtimes imgclf runs on, and a runtime mismatch said in one line.

The committed stubs carry gencode 6.30.0 (the Makefile's GRPCIO_TOOLS), which every runtime from
6.30.0 on accepts; grpcio-health-checking and grpcio-reflection bring stubs of their own, and so
does tritonclient. When two packages of one environment were installed for different protobuf
majors, the first stub imported raises protobuf's VersionError: `describe` turns it into a
sentence that names the file, both versions and what to do.
"""

from __future__ import annotations

import re

SUPPORTED = ">=6.31.1,<8"
"""The range pyproject.toml states (a test keeps them equal)."""

_VERSIONS = re.compile(
    r"loading (?P<file>\S+): gencode (?P<gencode>[\w.-]*\w) runtime (?P<runtime>[\w.-]*\w)"
)


def is_version_error(exc: BaseException) -> bool:
    """True for protobuf's gencode/runtime VersionError (however it was chained)."""
    while exc is not None:
        if type(exc).__name__ == "VersionError" and "protobuf" in type(exc).__module__:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def describe(exc: BaseException) -> tuple[str, str]:
    """(one line naming the file and both versions, a hint) for a protobuf VersionError."""
    text = " ".join(str(exc).split())
    match = _VERSIONS.search(text)
    if match is None:
        line = f"protobuf rejected generated code: {text}"
    else:
        line = (
            f"protobuf {match['runtime']} is installed, but {match['file']} was generated for "
            f"protobuf {match['gencode']}"
            + (" or newer" if _older(match["runtime"], match["gencode"]) else "")
        )
    hint = (
        f"imgclf runs on protobuf{SUPPORTED}; install everything in one pip command so that the "
        "versions agree (in a checkout: .venv/bin/pip install -e . 'tritonclient[grpc]'); "
        "`pip check` names the package that disagrees"
    )
    return line, hint


def _older(runtime: str, gencode: str) -> bool:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", v)[:3])

    try:
        return key(runtime) < key(gencode)
    except ValueError:
        return False
