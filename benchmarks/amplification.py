"""Request amplification: requests cheap to send and expensive to refuse, against a real
server; how long each takes to answer and how long the server's health check stalls meanwhile.

    python -m benchmarks.amplification                  # starts a server on models/
    python -m benchmarks.amplification --target 127.0.0.1:8001

Two probes: one Classify carrying many empty images, one ModelInfer whose BYTES tensor holds
many empty elements (`--mib` MiB each). Both must be refused at once (INVALID_ARGUMENT, from
the counts, before anything is converted) without stalling the event loop. Exit status 0 when
each is refused within `--max-seconds` and the health check never stalled longer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import add_server_arguments, finish
from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client.bench.launcher import server_or_target
from imgclf.client.channel import make_aio_channel


async def _stall_while(address: str, call: Callable[[], object]) -> tuple[float, float, str]:
    """(seconds the call took, longest health-check round trip meanwhile, call outcome)."""
    async with make_aio_channel(address, None) as health_channel:
        health = health_pb2_grpc.HealthStub(health_channel)
        worst = 0.0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal worst
            while not done.is_set():
                t = time.monotonic()
                await health.Check(health_pb2.HealthCheckRequest(), timeout=120)
                worst = max(worst, time.monotonic() - t)
                await asyncio.sleep(0.02)

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        try:
            await call()  # type: ignore[misc]
            outcome = "OK"
        except grpc.aio.AioRpcError as exc:
            outcome = f"{exc.code().name}: {(exc.details() or '')[:80]}"
        took = time.monotonic() - started
        done.set()
        await watcher
    return took, worst, outcome


async def probe(address: str, model: str, log: Callable[[str], None], mib: int = 4) -> dict:
    """Cheap-to-send, expensive-to-refuse requests: how long does the event loop stall?"""
    from imgclf._generated.inference import grpc_service_pb2 as oip_pb
    from imgclf._generated.inference import grpc_service_pb2_grpc as oip_grpc

    out = {}
    async with make_aio_channel(address, None) as channel:
        images = (mib << 20) // 4
        many = pb.ClassifyRequest(model=model, images=[pb.Image(encoded=b"")] * images)
        stub = pb_grpc.ImageClassifierStub(channel)
        took, worst, outcome = await _stall_while(address, lambda: stub.Classify(many, timeout=300))
        out["classify_empty_images"] = {
            "images": images,
            "seconds": round(took, 2),
            "health_stall_s": round(worst, 2),
            "outcome": outcome,
        }
        log(
            f"amplify    Classify with {images} empty images ({mib} MiB): answered in {took:.2f} s "
            f"({outcome}); health check stalled up to {worst:.2f} s"
        )
        request = oip_pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(bytes(mib << 20))
        oip = oip_grpc.GRPCInferenceServiceStub(channel)
        took, worst, outcome = await _stall_while(
            address, lambda: oip.ModelInfer(request, timeout=300)
        )
        out["oip_bytes_empty_elements"] = {
            "elements": (mib << 20) // 4,
            "seconds": round(took, 2),
            "health_stall_s": round(worst, 2),
            "outcome": outcome,
        }
        log(
            f"amplify    ModelInfer BYTES [1] with {(mib << 20) // 4} empty elements ({mib} MiB): "
            f"answered in {took:.2f} s ({outcome}); health check stalled up to {worst:.2f} s"
        )
    return out


# --- command line --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.amplification", description=__doc__.split("\n\n")[0]
    )
    add_server_arguments(p)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--mib", type=int, default=4, help="size of each probe message")
    p.add_argument("--max-seconds", type=float, default=1.0, help="longest answer/stall allowed")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with server_or_target(args.target, args.model_repository, args.server_args, say=print) as t:
        print(f"amplification against {t.address}, model {args.model}")
        out = asyncio.run(probe(t.address, args.model, print, args.mib))
    failures = [
        f"{name}: answered in {r['seconds']} s ({r['outcome']}), health stalled "
        f"{r['health_stall_s']} s"
        for name, r in out.items()
        if not r["outcome"].startswith("INVALID_ARGUMENT")
        or max(r["seconds"], r["health_stall_s"]) > args.max_seconds
    ]
    return finish("amplification", failures, out, args.json)


if __name__ == "__main__":
    sys.exit(main())
