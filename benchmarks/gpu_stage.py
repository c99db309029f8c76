"""Stage what a lent GPU machine lacks, and print the device calls that install it and run
`benchmarks/gpu_check.py run` there (see docs/performance.md, "What a GPU run must show").

The lent machine (Python 3.12, PyTorch with CUDA 13, a CPU-only onnxruntime, no network) gets
the serving dependencies it does not have as cp312 manylinux wheels: onnxruntime-gpu (the
CUDA 13 build, whose CUDA, cuBLAS, cuDNN, cuFFT and cuRAND libraries come from the nvidia-*
packages PyTorch already installed there) and the small pure-Python or binary packages of
the serving install. A call carries at most 64 MiB including the working tree, so the
onnxruntime-gpu wheel travels in pieces, one per call, each copied into a folder outside the
checkout that the warm machine keeps between calls; the last call joins the pieces, checks
the wheel's SHA-256, installs every wheel into a target folder put first on PYTHONPATH, and
runs the check. Versions are the ones installed here (the ones the test suite ran with).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_DIR = Path(".gpu-stage")
"""Relative to the repository root; ignored by git (.gitignore), named in `carry`."""
DEVICE_DIR = "/tmp/imgclf-gpu"
"""On the device: where the pieces and wheels gather between calls (outside the checkout)."""
DEVICE_SITE = "/tmp/imgclf-site"
"""On the device: the install target, first on PYTHONPATH."""
CALL_LIMIT = 64 * 1024 * 1024
"""What one device call may carry: working tree + carried paths."""
MARGIN = 2 * 1024 * 1024
COMMAND_LIMIT = 2000
RUN_TIMEOUT_S = 300
"""The check's own limit on the device; its steps stop starting at --budget-s (210)."""
NVIDIA_LIBS = (
    'import glob, site; print(":".join(d for p in site.getsitepackages() '
    'for d in sorted(glob.glob(p + "/nvidia/*/lib") + glob.glob(p + "/nvidia/*/*/lib"))))'
)
"""Prints the lib folders of the nvidia-* packages that PyTorch installed on the device, for
LD_LIBRARY_PATH (ONNX Runtime's CUDA provider then finds cuDNN, cuBLAS, ... by name)."""
GPU_WHEEL = "onnxruntime-gpu"
SMALL_PACKAGES = (
    # The serving install's dependencies that the device image lacks or has in another
    # version than the generated stubs need (grpcio and protobuf are pinned by the stubs).
    "grpcio",
    "grpcio-health-checking",
    "grpcio-reflection",
    "protobuf",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "annotated-types",
    "typing-inspection",
    "python-dotenv",
    "typing-extensions",  # pydantic needs a recent one
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


@dataclass(frozen=True)
class DeviceCall:
    command: str
    carry: list[str]
    timeout_s: int


def pinned(name: str) -> str:
    """NAME==VERSION as installed here."""
    return f"{name}=={importlib.metadata.version(name)}"


def download(requirements: list[str], dest: Path) -> list[Path]:
    """cp312 manylinux x86-64 wheels, no dependencies (each one is named)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp", "-d", str(dest),
        *[a for p in PLATFORMS for a in ("--platform", p)], *requirements,
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip downloaded no wheel into {dest}")
    return wheels


def tree_bytes(root: Path) -> int:
    """What a device call sends besides `carry`: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout  # fmt: skip
    total = 0
    for name in filter(None, out.decode().split("\0")):
        path = root / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def piece_sizes(total: int, budget: int, first_extra: int) -> list[int]:
    """Sizes of the pieces of a `total`-byte file, each at most `budget`, the first one
    leaving room for `first_extra` bytes that travel with it."""
    if budget - first_extra <= 0:
        raise ValueError("the small wheels alone exceed one call's budget")
    first = min(total, budget - first_extra)
    rest = total - first
    n = math.ceil(rest / budget) if rest else 0
    sizes = [first]
    for i in range(n):
        sizes.append(rest // n + (1 if i < rest % n else 0))
    return sizes


def split(path: Path, sizes: list[int], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("ort.part*"):
        old.unlink()
    pieces = []
    with path.open("rb") as src:
        for i, size in enumerate(sizes):
            piece = dest / f"ort.part{i:02d}"
            piece.write_bytes(src.read(size))
            pieces.append(piece)
    return pieces


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def device_calls(
    pieces: list[Path], wheel_name: str, wheel_sha: str, small_dir: Path, run_args: str
) -> list[DeviceCall]:
    """The calls, in order: one per piece (the first also brings the small wheels), the
    last joining, checking, installing and running the check."""
    calls = []
    for i, piece in enumerate(pieces):
        rel = str(piece.relative_to(ROOT) if piece.is_absolute() else piece)
        carry = [rel]
        steps = [f"mkdir -p {DEVICE_DIR}", f"cp {rel} {DEVICE_DIR}/"]
        if i == 0:
            small = str(small_dir.relative_to(ROOT) if small_dir.is_absolute() else small_dir)
            carry.append(small)
            steps.append(f"cp {small}/*.whl {DEVICE_DIR}/")
        if i < len(pieces) - 1:
            steps.append(f"ls -l {DEVICE_DIR}")
            calls.append(DeviceCall(" && ".join(steps), carry, 60))
            continue
        wheel = f"{DEVICE_DIR}/{wheel_name}"
        steps += [
            f"cat {DEVICE_DIR}/ort.part* > {wheel}",
            f"echo '{wheel_sha}  {wheel}' | sha256sum -c -",
            f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
            f"--upgrade --target {DEVICE_SITE} {DEVICE_DIR}/*.whl",
        ]
        run = (
            f"export LD_LIBRARY_PATH=$(python3 -c {shlex.quote(NVIDIA_LIBS)}):$LD_LIBRARY_PATH; "
            f"PYTHONUNBUFFERED=1 PYTHONPATH={DEVICE_SITE}:$PWD timeout {RUN_TIMEOUT_S} "
            f"python3 -m benchmarks.gpu_check run $OUT/gpu-check {run_args}".rstrip()
        )
        command = f"({' && '.join(steps)}) || exit 3; {run}"
        calls.append(DeviceCall(command, carry, RUN_TIMEOUT_S + 60))
    for call in calls:
        if len(call.command) > COMMAND_LIMIT:
            raise RuntimeError(f"a device command is {len(call.command)} chars (> 2000)")
    return calls


def stage(args: argparse.Namespace) -> int:
    stage_dir = ROOT / args.stage_dir
    wheels_dir, small_dir, pieces_dir = (stage_dir / n for n in ("wheels", "small", "pieces"))
    gpu_req = f"{GPU_WHEEL}=={args.onnxruntime_version or importlib.metadata.version(GPU_WHEEL)}"
    for old in small_dir.glob("*.whl") if small_dir.exists() else []:
        old.unlink()
    print(f"downloading {gpu_req} (cp312 manylinux x86-64) into {wheels_dir}", flush=True)
    (wheel,) = [w for w in download([gpu_req], wheels_dir) if gpu_req.split("==")[1] in w.name]
    small_reqs = [pinned(n) for n in SMALL_PACKAGES]
    print(f"downloading {', '.join(small_reqs)} into {small_dir}", flush=True)
    small = download(small_reqs, small_dir)
    small_bytes = sum(w.stat().st_size for w in small)
    tree = tree_bytes(ROOT)
    budget = min(args.piece_mib * 1024 * 1024, CALL_LIMIT - tree - MARGIN)
    sizes = piece_sizes(wheel.stat().st_size, budget, small_bytes)
    pieces = split(wheel, sizes, pieces_dir)
    calls = device_calls(
        [p.relative_to(ROOT) for p in pieces], wheel.name, sha256(wheel),
        small_dir.relative_to(ROOT), args.run_args,
    )  # fmt: skip
    mib = 1024 * 1024
    print(
        f"\nworking tree {tree / mib:.1f} MiB travels with every call; {wheel.name} "
        f"{wheel.stat().st_size / mib:.1f} MiB in {len(pieces)} pieces of at most "
        f"{max(sizes) / mib:.1f} MiB; {len(small)} small wheels {small_bytes / mib:.1f} MiB"
    )
    print(
        f"\n{len(calls)} device calls, in this order, each within 30 s of the previous one's "
        "end (the warm machine keeps /tmp between calls); the last one runs the check:\n"
    )
    for i, call in enumerate(calls, 1):
        print(f"# call {i}/{len(calls)}")
        print(json.dumps(asdict(call), indent=None))
    (stage_dir / "calls.json").write_text(json.dumps([asdict(c) for c in calls], indent=1))
    print(f"\n(also written to {(stage_dir / 'calls.json').relative_to(ROOT)})")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage-dir", type=Path, default=STAGE_DIR, help="ignored folder")
    parser.add_argument("--piece-mib", type=int, default=60, help="largest piece (MiB)")
    parser.add_argument(
        "--onnxruntime-version", help="onnxruntime-gpu version (default: the one installed here)"
    )
    parser.add_argument(
        "--run-args", default="", help="extra `gpu_check.py run` arguments for the last call"
    )
