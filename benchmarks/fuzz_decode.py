"""A bounded fuzz run of the decode/preprocess path (imgclf.imaging.preprocess_bytes).

    python -m benchmarks.fuzz_decode --duration 60                  # hypothesis, documented
    python -m benchmarks.fuzz_decode --duration 60 --formats all    # + what Pillow writes
    python -m benchmarks.fuzz_decode --duration 60 --engine atheris # libFuzzer via atheris

Inputs are arbitrary bytes, arbitrary bytes behind a real image header, and real small images
(JPEG, PNG, WebP, BMP, GIF in the modes that take special paths; with --formats all also TIFF,
ICO, DDS, TGA, ...) mutated by flips, overwrites with boundary 32-bit values, deletions,
insertions and truncations. Anything but a tensor or InvalidInput is a failure: it would
reach a client as INTERNAL. Failures are counted by exception type and location, and the
first input of each kind is saved under --artifacts. Prints the inputs tried and every
failure; exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 1_000_000
DOCUMENTED = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MORE_FORMATS = ("TIFF", "ICO", "DDS", "TGA", "PPM", "PCX", "SGI", "QOI", "IM", "BLP", "ICNS")
MAGICS = [
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"BM",
    b"GIF89a",
    b"GIF87a",
]
"""Headers that get arbitrary bytes past format identification into the decoders."""
EDIT_OPS = ("set", "xor", "delete", "insert", "truncate", "int32")


def seed_images(all_formats: bool = False) -> dict[str, bytes]:
    """Small real images in the documented formats and the modes that take special paths
    (EXIF orientation, CMYK, 16-bit, palette, alpha, animation); with `all_formats`, also one
    in every other format Pillow can write (the decoder accepts them today)."""
    from PIL import Image

    def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **params)
        return buf.getvalue()

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8))
    exif = rgb.getexif()
    exif[0x0112] = 6  # orientation: rotate
    gray16 = Image.fromarray(rng.integers(0, 65536, (9, 11), dtype=np.uint16))
    frames = [Image.new("RGB", (9, 7), c) for c in ((250, 0, 0), (0, 0, 250))]
    seeds = {
        "jpeg": encode(rgb, "JPEG", quality=80),
        "jpeg-progressive": encode(rgb, "JPEG", progressive=True),
        "jpeg-exif": encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-gray": encode(rgb.convert("L"), "JPEG"),
        "png": encode(rgb, "PNG"),
        "png-exif": encode(rgb, "PNG", exif=exif.tobytes()),
        "png-rgba": encode(rgb.convert("RGBA"), "PNG"),
        "png-palette": encode(rgb.convert("P"), "PNG"),
        "png-16bit": encode(gray16, "PNG"),
        "png-bilevel": encode(rgb.convert("1"), "PNG"),
        "png-animated": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "webp-lossy": encode(rgb, "WEBP", quality=70),
        "webp-lossless": encode(rgb, "WEBP", lossless=True),
        "webp-exif": encode(rgb, "WEBP", exif=exif.tobytes()),
        "bmp": encode(rgb, "BMP"),
        "gif": encode(rgb.convert("P"), "GIF"),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
    }
    if all_formats:
        for fmt in MORE_FORMATS:
            try:
                seeds[fmt.lower()] = encode(rgb, fmt)
            except (OSError, KeyError, ValueError):
                continue  # this Pillow cannot write it
    return seeds


def apply_edits(data: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    """Mutate `data`: each edit (op, relative position, payload) acts on a few bytes."""
    out = bytearray(data)
    for op, where, payload in edits:
        if not out:
            break
        i = int(where * len(out))
        if op == "set":
            out[i : i + len(payload)] = payload
        elif op == "xor":
            out[i] ^= payload[0] or 0xFF
        elif op == "delete":
            del out[i : i + payload[0] % 32 + 1]
        elif op == "insert":
            out[i:i] = payload
        elif op == "truncate":
            del out[i:]
        else:  # a boundary 32-bit value, where lengths and sizes live
            big = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)[payload[0] % 5]
            out[i : i + 4] = struct.pack(">I" if payload[0] & 1 else "<I", big)
    return bytes(out)


class Findings:
    """Inputs tried, how they ended, and the failures by kind (first input of each saved)."""

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts
        self.tried = 0
        self.ends: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def check(self, data: bytes) -> None:
        """Run one input through preprocess_bytes; record how it ended."""
        from imgclf.errors import InvalidInput
        from imgclf.imaging import Preprocessing, preprocess_bytes

        self.tried += 1
        spec = Preprocessing(input_size=(16, 16), resize_size=18)
        try:
            tensor = preprocess_bytes(
                data, spec, max_pixels=MAX_PIXELS, jpeg_draft=bool(len(data) & 1)
            )
        except InvalidInput as exc:
            self.ends[f"refused:{exc.reason}"] += 1
            return
        except Exception as exc:  # the finding: anything else would be an INTERNAL
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if f"{os.sep}service{os.sep}" in f.filename]
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
            if ours:
                where += f" via {Path(ours[-1].filename).name}:{ours[-1].lineno}"
            kind = f"{type(exc).__name__} at {where}: {str(exc)[:80]}"
            kind = re.sub(r"b'[^']*'|b\"[^\"]*\"", "b'...'", kind)  # one kind, whatever the
            kind = re.sub(r"(?<![.:])\b\d+\b", "N", kind)  # bytes and numbers
            self.failures[kind] += 1
            if kind not in self.examples:
                self.artifacts.mkdir(parents=True, exist_ok=True)
                path = self.artifacts / f"failure-{len(self.examples) + 1}.bin"
                path.write_bytes(data)
                self.examples[kind] = str(path)
            return
        ok = tensor.shape == (3, 16, 16) and tensor.dtype == np.float32
        self.ends["decoded" if ok and np.isfinite(tensor).all() else "bad-tensor"] += 1
        if not ok:
            self.failures[f"bad tensor {tensor.shape} {tensor.dtype}"] += 1

    def as_dict(self) -> dict:
        return {
            "tried": self.tried,
            "ends": dict(self.ends),
            "failures": dict(self.failures),
            "examples": self.examples,
        }


# --- engines -------------------------------------------------------------------------------


def run_hypothesis(findings: Findings, seeds: dict[str, bytes], duration: float) -> None:
    """Rounds of hypothesis-generated inputs (random seed each round) until time is up."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    edit = st.tuples(
        st.sampled_from(EDIT_OPS),
        st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
        st.binary(min_size=1, max_size=8),
    )
    inputs = st.one_of(
        st.binary(max_size=4096),
        st.tuples(st.sampled_from(MAGICS), st.binary(max_size=2048)).map(lambda t: t[0] + t[1]),
        st.tuples(st.sampled_from(sorted(seeds)), st.lists(edit, min_size=1, max_size=8)).map(
            lambda t: apply_edits(seeds[t[0]], t[1])
        ),
    )
    stop = time.monotonic() + duration

    @settings(
        max_examples=500,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=inputs)
    def round_of(data: bytes) -> None:
        if time.monotonic() < stop:
            findings.check(data)

    while time.monotonic() < stop:
        round_of()


def run_atheris(findings: Findings, seeds: dict[str, bytes], duration: float) -> None:
    """libFuzzer (atheris) in a child process, seeded with the seed images; the child
    records its findings in a JSON file the parent reads back."""
    with tempfile.TemporaryDirectory(prefix="fuzz-decode-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for name, data in seeds.items():
            (corpus / name).write_bytes(data)
        state = Path(tmp) / "findings.json"
        env = {
            **os.environ,
            "FUZZ_DECODE_STATE": str(state),
            "FUZZ_DECODE_ARTIFACTS": str(findings.artifacts),
        }
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.fuzz_decode",
            "--atheris-child",
            f"-max_total_time={int(duration)}",
            "-timeout=20",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
            str(corpus),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 300, env=env, cwd=REPO_ROOT
        )
        runs = re.findall(r"Done (\d+) runs", proc.stderr)
        if state.exists():
            child = json.loads(state.read_text())
            findings.tried = child["tried"]
            findings.ends.update(child["ends"])
            findings.failures.update(child["failures"])
            findings.examples.update(child["examples"])
        if runs:
            findings.tried = max(findings.tried, int(runs[-1]))
        if proc.returncode not in (0, None) and not findings.failures:
            tail = "\n".join(proc.stderr.splitlines()[-20:])
            findings.failures[f"libFuzzer exited with {proc.returncode}"] += 1
            findings.examples[f"libFuzzer exited with {proc.returncode}"] = tail


def atheris_child(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports():
        import PIL.Image  # noqa: F401  (instrument Pillow's Python plugins)

        import imgclf.imaging  # noqa: F401
    findings = Findings(Path(os.environ["FUZZ_DECODE_ARTIFACTS"]))
    state = Path(os.environ["FUZZ_DECODE_STATE"])
    last_save = [0.0]

    def one(data: bytes) -> None:
        findings.check(data)
        now = time.monotonic()
        if now - last_save[0] > 1.0 or findings.tried < 2:
            state.write_text(json.dumps(findings.as_dict()))
            last_save[0] = now

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--atheris-child":
        atheris_child(argv[1:])
        return 0
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fuzz_decode", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds to fuzz")
    p.add_argument("--engine", choices=("hypothesis", "atheris"), default="hypothesis")
    p.add_argument(
        "--formats",
        choices=("documented", "all"),
        default="documented",
        help="seed images: the documented formats, or every format Pillow writes",
    )
    p.add_argument(
        "--artifacts",
        type=Path,
        default=Path("fuzz-artifacts"),
        help="where the first input of each failure kind is saved",
    )
    p.add_argument("--json", type=Path, help="also write the findings here")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")  # Pillow warns about the damage we do on purpose
    seeds = seed_images(all_formats=args.formats == "all")
    findings = Findings(args.artifacts)
    print(
        f"fuzz_decode: engine {args.engine}, {args.duration:.0f} s, {len(seeds)} seed images "
        f"({args.formats} formats), max_pixels {MAX_PIXELS}"
    )
    started = time.monotonic()
    if args.engine == "atheris":
        run_atheris(findings, seeds, args.duration)
    else:
        run_hypothesis(findings, seeds, args.duration)
    elapsed = time.monotonic() - started
    decoded = findings.ends["decoded"]
    refused = sum(n for k, n in findings.ends.items() if k.startswith("refused:"))
    print(
        f"tried       {findings.tried} inputs in {elapsed:.0f} s "
        f"({findings.tried / max(elapsed, 1e-9):.0f}/s): {decoded} decoded to a tensor, "
        f"{refused} refused with InvalidInput"
    )
    print(f"refusals    {dict(sorted((k, n) for k, n in findings.ends.items() if k != 'decoded'))}")
    if findings.failures:
        print(f"FAILURES    {sum(findings.failures.values())} inputs raised something else:")
        for kind, n in findings.failures.most_common():
            print(f"  {n:6d}  {kind}  (first input: {findings.examples.get(kind, '-')})")
    else:
        print("failures    none: every input decoded or was refused with InvalidInput")
    if args.json:
        args.json.write_text(json.dumps(findings.as_dict(), indent=2))
    return 1 if findings.failures else 0


if __name__ == "__main__":
    sys.exit(main())
