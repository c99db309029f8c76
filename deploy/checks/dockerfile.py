"""Check the Dockerfile and its build context offline (`make deploy-check-dockerfile`).

No Docker engine runs here, so: hadolint lints the Dockerfile (deploy/hadolint.yaml; every
finding fails); the build context is computed from .dockerignore the way Docker does (last
matching pattern wins, a pattern matching a parent directory matches its files) and every COPY
source must be in it while the virtual environment, git data and tests must not; and the
serving stage's install (`pip install .` from exactly the files it copies) is rehearsed by
building the wheel from a copy of those files and checking it carries the server and the
`imgclf` command.

    python -m deploy.checks.dockerfile [--no-wheel]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from deploy.checks.common import DEPLOY, REPO, CheckError, report, run, venv_tool

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HADOLINT_CONFIG = DEPLOY / "hadolint.yaml"
NEVER_IN_CONTEXT = (".venv", ".git", "tests", "runs", "deploy")
MAX_CONTEXT_BYTES = 64 * 1024 * 1024


def hadolint(dockerfile: Path = DOCKERFILE) -> list[str]:
    result = run(
        [venv_tool("hadolint"), "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)]
    )
    if result.returncode == 0:
        return []
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()] or [
        f"hadolint exited {result.returncode}"
    ]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c) if c != "[" else "[")
        if c == "[":
            j = pattern.index("]", i)
            out += pattern[i + 1 : j + 1]
            i = j
        i += 1
    return re.compile(f"^{out}$")


def _patterns(text: str) -> list[tuple[bool, str]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        rules.append((negate, pattern.strip("/") or "."))
    return rules


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    return [(negate, _pattern_regex(pattern)) for negate, pattern in _patterns(text)]


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def context_files(root: Path = REPO, dockerignore: Path = DOCKERIGNORE) -> set[str]:
    text = dockerignore.read_text() if dockerignore.is_file() else ""
    rules = ignore_rules(text)
    negations = [pattern for negate, pattern in _patterns(text) if negate]
    files = set()
    for directory, dirs, names in os.walk(root):
        base = Path(directory).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        # Like Docker: skip an excluded directory unless an exception may re-include inside it.
        dirs[:] = [
            d
            for d in dirs
            if not excluded(prefix + d, rules)
            or any(n.startswith(prefix + d + "/") or n.startswith("**") for n in negations)
        ]
        files |= {prefix + n for n in names if not excluded(prefix + n, rules)}
    return files


def copy_sources(dockerfile: Path = DOCKERFILE) -> dict[str, list[str]]:
    """Per stage, the context paths its COPY/ADD instructions read (not --from=... ones)."""
    stages: dict[str, list[str]] = {}
    stage = ""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            stage = words[3] if len(words) >= 4 and words[2].upper() == "AS" else words[1]
            stages[stage] = []
        elif words[0].upper() in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            if any(w.startswith("--from") for w in words[1:]):
                continue
            stages.setdefault(stage, []).extend(args[:-1])
    return stages


def check_context(files: set[str], stages: dict[str, list[str]]) -> Iterator[str]:
    for stage, sources in stages.items():
        for source in sources:
            source = source.rstrip("/")
            if not (REPO / source).exists():
                yield f"stage {stage}: COPY source {source} does not exist"
            elif source not in files and not any(f.startswith(source + "/") for f in files):
                yield f"stage {stage}: COPY source {source} is excluded by .dockerignore"
            elif (REPO / source).is_dir():
                missing = [
                    p.relative_to(REPO).as_posix()
                    for p in (REPO / source).rglob("*")
                    if p.is_file()
                    and "__pycache__" not in p.parts
                    and not p.name.endswith(".pyc")
                    and p.relative_to(REPO).as_posix() not in files
                ]
                if missing:
                    yield f"stage {stage}: .dockerignore drops {len(missing)} file(s) of {source}"
    for path in NEVER_IN_CONTEXT:
        if any(f == path or f.startswith(path + "/") for f in files):
            yield f".dockerignore lets {path}/ into the build context"
    size = sum((REPO / f).stat().st_size for f in files)
    if size > MAX_CONTEXT_BYTES:
        yield f"build context is {size / 2**20:.0f} MiB (> {MAX_CONTEXT_BYTES / 2**20:.0f} MiB)"


def check_serving_wheel(stages: dict[str, list[str]]) -> Iterator[str]:
    """`pip install .` of the serve-build stage, rehearsed: build the wheel from its COPYs."""
    sources = stages.get("serve-build")
    if not sources:
        yield "no serve-build stage copying the sources"
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for source in sources:
            origin = REPO / source.rstrip("/")
            if origin.is_dir():
                shutil.copytree(
                    origin, src / origin.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy2(origin, src / origin.name)
        result = run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--quiet",
                "--wheel-dir",
                str(Path(tmp) / "dist"),
                str(src),
            ]
        )
        if result.returncode != 0:
            yield f"pip cannot build the serving install from the copied files: {result.stderr}"
            return
        wheel = next((Path(tmp) / "dist").glob("imgclf-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            entry_points = next((n for n in names if n.endswith("entry_points.txt")), None)
            scripts = z.read(entry_points).decode() if entry_points else ""
        for needed in (
            "imgclf/cli.py",
            "imgclf/server.py",
            "imgclf/_generated/imgclf/v1/image_classifier_pb2.py",
        ):
            if needed not in names:
                yield f"the serving wheel lacks {needed}"
        if "imgclf = imgclf.cli:main" not in scripts:
            yield "the serving wheel has no `imgclf` console script"
        top_level = {n.split("/")[0] for n in names if ".dist-info/" not in n}
        if top_level != {"imgclf"}:
            yield f"the serving wheel installs {sorted(top_level)}, not only the import name imgclf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-wheel", action="store_true", help="skip the wheel rehearsal")
    args = parser.parse_args(argv)
    checked = ["hadolint", "build context"]
    try:
        problems = hadolint()
        stages = copy_sources()
        problems += check_context(context_files(), stages)
        if not args.no_wheel:
            problems += check_serving_wheel(stages)
            checked.append("serving wheel from the copied files")
    except CheckError as exc:
        problems = [str(exc)]
    return report("dockerfile", problems, checked)


if __name__ == "__main__":
    sys.exit(main())
