"""The `imgclf` command: serve, classify, and (with the train extra) train/export/evaluate."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgclf.client import Client

TOKEN_ENV = "IMGCLF_TOKEN"

TRAIN_EXTRA_HINT = (
    "this command needs the training extra (PyTorch): pip install 'imgclf[train]' "
    "(or, in a checkout, `make install-all`)"
)
TRAINING_COMMANDS = {
    "train": ("imgclf.training.train", "train a CNN on a folder of images or a built-in dataset"),
    "export": ("imgclf.training.export", "export a checkpoint to ONNX into the model repository"),
    "evaluate": ("imgclf.training.evaluate", "evaluate an exported ONNX model on labelled images"),
    "models": ("imgclf.training.models_list", "list the architectures imgclf train takes"),
}


def _client(args: argparse.Namespace) -> Client:
    from imgclf.client import Client

    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV)
    return Client(
        args.server, timeout=args.timeout, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
        tls_key=args.tls_key, token=token,
    )  # fmt: skip


def connection_options() -> argparse.ArgumentParser:
    """Flags every client command shares: where the server is and how to reach it."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of the server")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds")
    group.add_argument("--tls-ca", type=Path, help="CA certificate (PEM): connect with TLS")
    group.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS")
    group.add_argument("--tls-key", type=Path, help="client private key (PEM) for mutual TLS")
    group.add_argument(
        "--token-file", type=Path, help=f"file with the bearer token (default: ${TOKEN_ENV})"
    )
    return parent


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from imgclf.server import serve
    from imgclf.settings import settings_from_args

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"imgclf serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(settings))
    except RuntimeError as exc:
        logging.getLogger("imgclf").error("%s", exc)
        return 1
    return 0


def _classify(args: argparse.Namespace) -> int:
    import grpc

    try:
        with _client(args) as client:
            reply = client.classify_files(args.images, model=args.model, top_k=args.top_k)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out = {
            "model": reply.model,
            "version": reply.version,
            "results": [
                {
                    "image": str(path),
                    "top": [
                        {"index": s.index, "label": s.label, "probability": s.probability}
                        for s in result.top
                    ],
                }
                for path, result in zip(args.images, reply.results, strict=True)
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"model {reply.model} version {reply.version}")
    for path, result in zip(args.images, reply.results, strict=True):
        print(f"\n{path}")
        width = max((len(s.label) for s in result.top), default=5)
        for rank, score in enumerate(result.top, 1):
            bar = "#" * round(score.probability * 30)
            print(f"  {rank:>2}. {score.label:<{width}}  {score.probability:7.2%}  {bar}")
    return 0


def _models(args: argparse.Namespace) -> int:
    import grpc

    try:
        with _client(args) as client:
            reply = client.list_models()
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    for m in reply.models:
        shape = "x".join(str(d) for d in m.input_shape)
        print(
            f"{m.name}  versions={list(m.versions)}  classes={len(m.labels)}  input={shape}  "
            f"provider={m.provider}  precision={m.metadata.get('precision', '?')}  "
            f"max_batch={m.max_batch_size}"
        )
        if "accuracy_gate" in m.metadata:
            print(f"  calibration: {m.metadata.get('calibration')}")
            print(f"  accuracy gate: {m.metadata['accuracy_gate']}")
    return 0


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when the server's gRPC health says SERVING (container and k8s probes)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from imgclf.client import open_channel

    try:
        with open_channel(args.server, args.tls_ca, args.tls_cert, args.tls_key) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def build_parser() -> argparse.ArgumentParser:
    from imgclf.settings import add_settings_arguments

    parser = argparse.ArgumentParser(prog="imgclf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the model repository over gRPC")
    add_settings_arguments(serve)
    serve.set_defaults(func=_serve)

    conn = connection_options()
    classify = sub.add_parser(
        "classify", parents=[conn], help="classify image files through a running server"
    )
    classify.add_argument("images", nargs="+", type=Path, help="image files")
    classify.add_argument("--model", default="", help="model name (default: the server's)")
    classify.add_argument("--top-k", type=int, default=5, help="classes per image")
    classify.add_argument("--json", action="store_true", help="print JSON")
    classify.set_defaults(func=_classify)

    served = sub.add_parser(
        "served-models", parents=[conn], help="list the models a running server serves"
    )
    served.set_defaults(func=_models)

    health = sub.add_parser(
        "health", parents=[conn], help="exit 0 if a running server reports SERVING"
    )
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    health.set_defaults(timeout=5.0)
    health.set_defaults(func=_health)

    from imgclf.client.bench import cli as bench_cli

    bench = sub.add_parser(
        "bench",
        help="load-test a server and compare with the machine's in-process limit",
        description=bench_cli.DESCRIPTION,
    )
    bench_cli.add_arguments(bench)
    bench.set_defaults(func=bench_cli.run)

    for name, (_module, help_text) in TRAINING_COMMANDS.items():
        p = sub.add_parser(name, help=f"{help_text} (train extra)", add_help=False)
        p.set_defaults(func=None, training=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in TRAINING_COMMANDS:
        module_name = TRAINING_COMMANDS[argv[0]][0]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in {"torch", "torchvision", "timm", "onnx"}:
                print(f"imgclf {argv[0]}: {TRAIN_EXTRA_HINT} (missing: {exc.name})",
                      file=sys.stderr)  # fmt: skip
                return 2
            raise
        return int(module.main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
