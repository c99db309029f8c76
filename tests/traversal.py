"""Model names that try to reach files outside the model repository, and the layout they aim
at: a repository holding a good model, and beside it a folder `outside` holding a valid model
`evil` that must never load (shared by the unit and the integration tests).

`layout(tmp)` builds tmp/repo and tmp/outside; `traversal_names(tmp)` lists the names, some of
them absolute paths into tmp/outside. Three repository entries are links out of it: a model
folder (`link-model`), a version folder (`link-version/1`) and a model file
(`link-file/1/model.onnx`); a poller must not serve them either.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_model import make_tiny_model

SIZE = 16
OUTSIDE_MODEL = "evil"
LINKS = ("link-model", "link-version", "link-file")
"""Plain names whose folder, version folder or model file links outside the repository."""


def layout(tmp: Path, good: str = "tiny") -> tuple[Path, Path]:
    """(repository, outside folder): repo/<good>/1 is a valid model, outside/evil/1 another."""
    repo, outside = tmp / "repo", tmp / "outside"
    make_tiny_model(repo / good / "1" / "model.onnx", size=SIZE)
    make_tiny_model(outside / OUTSIDE_MODEL / "1" / "model.onnx", size=SIZE)
    (repo / "link-model").symlink_to(outside / OUTSIDE_MODEL, target_is_directory=True)
    (repo / "link-version").mkdir()
    (repo / "link-version" / "1").symlink_to(outside / OUTSIDE_MODEL / "1")
    (repo / "link-file" / "1").mkdir(parents=True)
    (repo / "link-file" / "1" / "model.onnx").symlink_to(
        outside / OUTSIDE_MODEL / "1" / "model.onnx"
    )
    return repo, outside


def traversal_names(tmp: Path) -> list[str]:
    """Every name tried; each must be refused, none may load the outside model. (The empty
    name is no traversal: inference requests that name no model go to the default one.)"""
    outside = tmp / "outside"
    evil = outside / OUTSIDE_MODEL
    absolute = str(evil)
    names = [
        "../outside/evil",
        "../outside/evil/",
        "./../outside/evil",
        "../../outside/evil",
        "../" * 40 + absolute.lstrip("/"),
        "tiny/../../outside/evil",
        "tiny/../../../" + absolute.lstrip("/"),
        "nonexistent/../../outside/evil",
        absolute,
        absolute + "/",
        absolute + "/1",
        absolute + "/1/model.onnx",
        "//" + absolute.lstrip("/"),
        str(tmp / "repo" / ".." / "outside" / OUTSIDE_MODEL),
        str(tmp / "repo" / "tiny"),  # absolute, even when it points inside
        "/",
        "/etc",
        "/etc/passwd",
        "/proc/self/root" + absolute,
        "..",
        ".",
        "...",
        "../",
        "..\\outside\\evil",
        "..\\..\\outside\\evil",
        "tiny\\..\\..\\outside\\evil",
        "..%2Foutside%2Fevil",
        "%2e%2e/outside/evil",
        "..%c0%afoutside%c0%afevil",
        "\u2025/outside/evil",  # two-dot leader
        "\uff0e\uff0e/outside/evil",  # fullwidth dots
        "..\u2215outside\u2215evil",  # division slash
        "..\u2044outside\u2044evil",  # fraction slash
        "tiny\x00",
        "tiny\x00/../../outside/evil",
        "\x00../outside/evil",
        "../outside/evil\x00.onnx",
        "tiny\n",
        "tiny\r\n../outside/evil",
        " ../outside/evil",
        "tiny ",
        "~",
        "~/outside/evil",
        "~root",
        "$HOME/outside/evil",
        "file://" + absolute,
        "file:" + absolute,
        ".hidden",
        ".git",
        "tiny/1",
        "tiny/1/model.onnx",
        "tiny/",
        "tiny//",
        "./tiny",
        "-rf",
        "*",
        "?",
        "tiny*",
        "a" * 129,
        "a" * 4096 + "/../outside/evil",
        *LINKS,
    ]
    assert len(set(names)) == len(names), "a name is listed twice"
    return names
