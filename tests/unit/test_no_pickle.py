"""No pickle on the serving path, weights-only checkpoint loads in training: proved by reading
the source (AST), so a new import or call cannot slip in unnoticed.

- service/ imports none of pickle, marshal, shelve, joblib, dill, cloudpickle, and calls no
  unpickling loader (torch.load, torch.hub.load, pandas.read_pickle, numpy.load with pickles);
- every torch.load in training/ passes weights_only=True (literally);
- numpy.load never passes allow_pickle=True, anywhere in the repository's code.
Aliases are followed (`import numpy as np`, `from torch import load as tl`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "joblib", "dill",
                  "cloudpickle"}  # fmt: skip
UNPICKLING_CALLS = {"torch.load", "torch.hub.load", "pandas.read_pickle", "numpy.load"}
"""Calls that may unpickle (numpy.load only with allow_pickle=True, checked separately)."""
CODE_ROOTS = ("service", "training", "tests", "benchmarks")


def python_files(*roots: str) -> list[Path]:
    files = []
    for root in roots:
        files += [p for p in (REPO_ROOT / root).rglob("*.py") if "_generated" not in p.parts]
    return sorted(files)


class Scan(ast.NodeVisitor):
    """Imported modules and calls (by fully qualified name, aliases resolved) of one module."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.imported: set[str] = set()
        self.calls: list[tuple[str, ast.Call]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.imported.add(a.name)
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                head = a.name.split(".")[0]
                self.aliases[head] = head

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            self.imported.add(node.module)
            for a in node.names:
                self.imported.add(f"{node.module}.{a.name}")
                self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def visit_Call(self, node: ast.Call) -> None:
        name = dotted(node.func)
        if name is not None:
            head, _, rest = name.partition(".")
            resolved = self.aliases.get(head, head)
            self.calls.append((f"{resolved}.{rest}" if rest else resolved, node))
        self.generic_visit(node)


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def scan_source(source: str, filename: str = "<source>") -> Scan:
    scan = Scan()
    scan.visit(ast.parse(source, filename))
    return scan


def scan_file(path: Path) -> Scan:
    return scan_source(path.read_text(), str(path))


def keyword_is(call: ast.Call, name: str, value: object) -> bool:
    """The call passes `name=<literal value>` (a **kwargs could hide anything: not proven)."""
    if any(k.arg is None for k in call.keywords):
        return False
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
        for k in call.keywords
    )


def numpy_load_is_safe(call: ast.Call) -> bool:
    """allow_pickle left at its default (False) or passed as a literal False."""
    passed = any(k.arg in ("allow_pickle", None) for k in call.keywords)
    return not passed or keyword_is(call, "allow_pickle", False)


def pickle_findings(path: Path, scan: Scan) -> list[str]:
    where = path.relative_to(REPO_ROOT) if path.is_absolute() else path
    found = [
        f"{where}: imports {m}" for m in sorted(scan.imported) if m.split(".")[0] in PICKLE_MODULES
    ]
    for name, call in scan.calls:
        if name in UNPICKLING_CALLS and not (name == "numpy.load" and numpy_load_is_safe(call)):
            found.append(f"{where}:{call.lineno}: calls {name}")
    return found


def test_the_scanner_sees_through_aliases() -> None:
    """The scan is not vacuous: it catches each form a pickle load can take."""
    source = """
import pickle as p
from joblib import load
import numpy as np
from torch import load as tl
import torch
np.load("a.npy", allow_pickle=True)
np.load("b.npy")
tl("x.pt")
torch.load("y.pt", weights_only=True)
torch.load("z.pt", **opts)
"""
    scan = scan_source(source)
    findings = pickle_findings(Path("example.py"), scan)
    assert "example.py: imports pickle" in findings
    assert "example.py: imports joblib.load" in findings
    assert "example.py:7: calls numpy.load" in findings
    assert "example.py:8: calls numpy.load" not in findings  # allow_pickle defaults to False
    assert "example.py:9: calls torch.load" in findings
    loads = [c for n, c in scan.calls if n == "torch.load"]
    assert [keyword_is(c, "weights_only", True) for c in loads] == [False, True, False]


def test_the_serving_path_never_unpickles() -> None:
    findings = []
    for path in python_files("service"):
        findings += pickle_findings(path, scan_file(path))
    assert not findings, "pickle on the serving path:\n" + "\n".join(findings)


def test_every_torch_load_in_training_is_weights_only() -> None:
    loads = [
        (path, call)
        for path in python_files("training")
        for name, call in scan_file(path).calls
        if name == "torch.load"
    ]
    assert loads, "no torch.load found in training/: the scan is looking in the wrong place"
    unsafe = [
        f"{path.relative_to(REPO_ROOT)}:{call.lineno}"
        for path, call in loads
        if not keyword_is(call, "weights_only", True)
    ]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


@pytest.mark.parametrize("root", CODE_ROOTS)
def test_numpy_load_never_allows_pickles(root: str) -> None:
    unsafe = [
        f"{path.relative_to(REPO_ROOT)}:{call.lineno}"
        for path in python_files(root)
        for name, call in scan_file(path).calls
        if name == "numpy.load" and not numpy_load_is_safe(call)
    ]
    assert not unsafe, f"numpy.load that may unpickle: {unsafe}"
