"""The shape of the package: no import circle, and the bench imports only the client side.

Every `import`/`from ... import` of an imgclf module counts, at module level or inside a
function (a lazy import hides a circle from the interpreter, not from a reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"imgclf": ROOT / "service", "imgclf.training": ROOT / "training"}
CLIENT_SIDE = ("imgclf.client", "imgclf._generated", "imgclf.imaging", "imgclf.modelmeta",
               "imgclf.bytestensor", "imgclf.repolayout", "imgclf.runtime.options")  # fmt: skip
"""What the client and its bench may import: themselves, the stubs, the shared contract (the
repository's folders; the ONNX Runtime session options, which the bench's limit must share
with the server to run the model as it does)."""


def modules() -> dict[str, Path]:
    out = {}
    for name, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            if "_generated" in path.parts or "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([name, *parts])] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The imgclf modules `path` imports (a `from package import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(p, known) - {m} for m, p in mods.items()}


def test_no_import_circle() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(edges):
        visit(node, [])


def test_the_client_and_its_bench_import_only_the_client_side() -> None:
    for module, deps in graph().items():
        if module.startswith("imgclf.client"):
            outside = {d for d in deps if not d.startswith(CLIENT_SIDE) and d != "imgclf"}
            assert not outside, f"{module} imports server modules {sorted(outside)}"


def test_the_circle_finder_finds_circles(tmp_path: Path) -> None:
    """The check can fail: two modules importing each other are reported."""
    (tmp_path / "a.py").write_text("from imgclf.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    import imgclf.a\n")
    known = {"imgclf.a", "imgclf.b"}
    assert imports(tmp_path / "a.py", known) == {"imgclf.b"}
    assert imports(tmp_path / "b.py", known) == {"imgclf.a"}
