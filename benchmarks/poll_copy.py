"""Copy-while-polling: models copied into and deleted from a repository that a poll-mode
server watches, under steady load; every trial must end in the documented state.

    python -m benchmarks.poll_copy                        # 18 trials on models/digits
    python -m benchmarks.poll_copy --trials 50 --poll-interval-s 0.2 --chunks 40

A poll-mode server (127.0.0.1, free ports) serves a temporary repository holding version 1
of `--model`, while `--concurrency` clients classify in a closed loop. Each trial:

1. copies the same model in as version 2, in `--chunks` writes `--chunk-pause-s` apart (polls
   see it half written), then sets an older mtime as `cp -p` does;
2. waits until version 2 serves: it must be loaded exactly once and never show FAILED in the
   repository index during the copy (a half-written file is not tried);
3. deletes the version 2 folder: version 1 must serve again, version 2 leave the index;
4. writes a corrupt version 3, waits for FAILED, deletes it: it must leave the index and
   `imgclf_model_state`.

Prints each trial's timings and what went wrong, the clients' outcomes (all must be OK), and
exits 1 on any failure. Before the fix 4 of 18 trials left version 2 FAILED for good.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import tritonclient.grpc as triton

from benchmarks import REPO_ROOT, finish, image_bytes
from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client import open_channel
from imgclf.client.bench.launcher import ServerProcess, start_server
from imgclf.repolayout import versions

TIMEOUT_S = 30.0


def copy_slowly(data: bytes, target: Path, chunks: int, pause: float) -> None:
    """Write `data` to `target` in `chunks`, `pause` seconds apart, then give it an older
    mtime as `cp -p` does (one more change of the fingerprint after its bytes are done)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // chunks)
    with target.open("wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)
    os.utime(target, ns=(1_600_000_000 * 10**9,) * 2)


def wait_for(check: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `check()` held, or None after `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.02)
    return time.monotonic() - started


class Load:
    """Closed-loop Classify clients in threads; outcomes counted by (code, version)."""

    def __init__(self, target: str, model: str, image: bytes, concurrency: int) -> None:
        self.channel = open_channel(target)
        self.stub = pb_grpc.ImageClassifierStub(self.channel)
        self.request = pb.ClassifyRequest(model=model, images=[pb.Image(encoded=image)])
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(concurrency)]
        for t in self._threads:
            t.start()

    def served_version(self) -> int:
        return self.stub.Classify(self.request, timeout=TIMEOUT_S).version

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.stub.Classify(self.request, timeout=TIMEOUT_S)
                self.outcomes[f"OK v{reply.version}"] += 1
            except grpc.RpcError as exc:
                self.outcomes[f"{exc.code().name}: {(exc.details() or '')[:80]}"] += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.channel.close()


def index(client: triton.InferenceServerClient) -> dict[str, str]:
    rows = client.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
    return {m.get("version", ""): m.get("state", "") for m in rows.get("models", [])}


def state_series(server: ServerProcess, version: int) -> int:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        line.startswith("imgclf_model_state{") and f'version="{version}"' in line
        for line in text.splitlines()
    )


def trial(
    n: int,
    server: ServerProcess,
    repo: Path,
    model: str,
    data: bytes,
    load: Load,
    tc: triton.InferenceServerClient,
    args: argparse.Namespace,
) -> list[str]:
    wrong: list[str] = []
    wait = args.poll_interval_s * 10 + 10
    loads_before = server.log().count(f"model {model} version 2 loaded in")
    target = repo / model / "2" / "model.onnx"
    copier = threading.Thread(
        target=copy_slowly, args=(data, target, args.chunks, args.chunk_pause_s)
    )
    copier.start()
    seen: set[str] = set()
    while copier.is_alive():
        seen.add(index(tc).get("2", "absent"))
        time.sleep(0.02)
    copier.join()
    to_serve = wait_for(lambda: load.served_version() == 2, wait)
    time.sleep(args.poll_interval_s * 2)  # a second load would come now
    loads = server.log().count(f"model {model} version 2 loaded in") - loads_before
    if to_serve is None:
        wrong.append(f"version 2 not served after {wait:.0f} s (index: {index(tc)})")
    if loads != 1:
        wrong.append(f"version 2 loaded {loads} times")
    if "FAILED" in seen:
        wrong.append("version 2 showed FAILED while it was copied in")
    shutil.rmtree(target.parent)
    to_fallback = wait_for(lambda: load.served_version() == 1, wait)
    if to_fallback is None:
        wrong.append("deleting the served version 2 did not bring version 1 back")
    if wait_for(lambda: "2" not in index(tc), wait if to_fallback is None else 2.0) is None:
        wrong.append("the deleted version 2 stayed in the index")
    bad = repo / model / "3" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00not an ONNX model\xff" * 64)
    if wait_for(lambda: index(tc).get("3") == "FAILED", wait) is None:
        wrong.append("a corrupt version 3 did not show FAILED")
    shutil.rmtree(bad.parent)
    to_forget = wait_for(lambda: "3" not in index(tc) and not state_series(server, 3), wait)
    if to_forget is None:
        wrong.append("the deleted FAILED version 3 stayed in the index or imgclf_model_state")
    print(
        f"trial {n:3d}: served {fmt(to_serve)} after the copy (loads {loads}, states seen "
        f"{sorted(seen)}), fallback {fmt(to_fallback)}, failed version gone {fmt(to_forget)}"
        + (f"  WRONG: {'; '.join(wrong)}" if wrong else "")
    )
    return wrong


def fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.poll_copy", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--model", default="digits")
    p.add_argument("--image", default="red", help="a file to send, or 'photo' / 'red'")
    p.add_argument("--trials", type=int, default=18)
    p.add_argument("--poll-interval-s", type=float, default=0.3)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--chunk-pause-s", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--server-args", default="--instances 1 --intra-op-threads 1")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    image = image_bytes(args.image)
    (newest, *_) = versions(args.model_repository / args.model)
    data = newest.path.read_bytes()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="imgclf-poll-copy-") as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(newest.path.parent, repo / args.model / "1")
        server = start_server(
            repo, Path(tmp), "--model-control-mode", "poll",
            "--poll-interval-s", str(args.poll_interval_s), *args.server_args.split(),
        )  # fmt: skip
        tc = triton.InferenceServerClient(server.target)
        load = Load(server.target, args.model, image, args.concurrency)
        try:
            print(
                f"poll_copy: {args.trials} trials, {len(data)} bytes copied in {args.chunks} "
                f"chunks {args.chunk_pause_s} s apart, poll every {args.poll_interval_s} s, "
                f"{args.concurrency} clients"
            )
            for n in range(1, args.trials + 1):
                failures += [f"trial {n}: {w}" for w in trial(
                    n, server, repo, args.model, data, load, tc, args
                )]  # fmt: skip
        finally:
            load.stop()
            tc.close()
            code = server.stop()
    bad = {k: v for k, v in load.outcomes.items() if not k.startswith("OK")}
    print(f"clients     {dict(load.outcomes)}")
    if bad:
        failures.append(f"client requests failed: {bad}")
    if code != 0:
        failures.append(f"server exited with {code}")
    stuck = sum("not served" in f for f in failures)
    print(f"trials      {args.trials}, stuck {stuck}, with any failure "
          f"{len({f.split(':')[0] for f in failures if f.startswith('trial')})}")  # fmt: skip
    return finish("poll_copy", failures)


if __name__ == "__main__":
    sys.exit(main())
