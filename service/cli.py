"""The `imgclf` command: serve, classify, and (with the train extra) train/export/evaluate.

A failure ends in one line naming what is at fault and a hint (imgclf.usererror); exit 2 for a
usage mistake, 1 for anything else; `--debug` anywhere on the line adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.helpformat import DefaultsHelpFormatter
from imgclf.usererror import DEBUG_FLAG, USAGE, UserError, run_main

if TYPE_CHECKING:
    import grpc

    from imgclf.client import Client

TOKEN_ENV = "IMGCLF_TOKEN"

TRAIN_EXTRA_HINT = (
    "in a checkout: `make install-all` (or .venv/bin/pip install -e '.[train]'); "
    "an installed imgclf: pip install 'imgclf[train]'"
)
NO_SERVER_HINT = (
    "start one with `make serve` (or `imgclf serve`) in another terminal, "
    "or pass --server HOST:PORT"
)
TRAINING_COMMANDS = {
    "train": ("imgclf.training.train", "train a CNN on a folder of images or a built-in dataset"),
    "export": ("imgclf.training.export", "export a checkpoint to ONNX into the model repository"),
    "evaluate": ("imgclf.training.evaluate", "evaluate an exported ONNX model on labelled images"),
    "models": ("imgclf.training.models_list", "list the architectures imgclf train takes"),
    "shards": ("imgclf.training.shard_writer", "write an image folder as tar shards for training"),
    "launch": (
        "imgclf.training.launch",
        "torchrun with a one-line error when the rendezvous fails",
    ),
}


def _client(args: argparse.Namespace) -> Client:
    from imgclf.client import Client

    try:
        token = (
            args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV)
        )
    except OSError as exc:
        raise UserError(f"--token-file {args.token_file}: {exc.strerror or exc}") from exc
    return Client(
        args.server, timeout=args.timeout, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
        tls_key=args.tls_key, token=token,
    )  # fmt: skip


def connection_options() -> argparse.ArgumentParser:
    """Flags every client command shares: where the server is and how to reach it."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of the server")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
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
        problems = [
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']} "
            f"(got {e.get('input')!r})"
            for e in exc.errors()
        ]
        raise UserError(
            "; ".join(problems), "the flag or its IMGCLF_* variable (see --help)", code=USAGE
        ) from exc
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(settings))
    except RuntimeError as exc:
        logging.getLogger("imgclf").error("%s", exc)
        return 1
    except FileNotFoundError as exc:
        raise UserError(
            str(exc),
            "pass --model-repository DIR (a checkout's models/) or set IMGCLF_MODEL_REPOSITORY",
        ) from exc
    return 0


def rpc_error(exc: grpc.RpcError, args: argparse.Namespace) -> UserError:
    """A failed call as one line with what to do about it."""
    import grpc

    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        why = "connection refused" if "refused" in details.lower() else details
        return UserError(f"no server answering at {args.server} ({why})", NO_SERVER_HINT)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UserError(
            f"{args.server} refused the call: {details}",
            f"pass --token-file FILE or set ${TOKEN_ENV}",
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UserError(
            f"{args.server} did not answer within --timeout {args.timeout:g} s",
            "pass a larger --timeout",
        )
    return UserError(f"{code.name}: {details}")


def _model_choice_error(client: Client, args: argparse.Namespace) -> UserError | None:
    """When no --model was given and the server has several and no default: say so."""
    if args.model:
        return None
    names = sorted(m.name for m in client.list_models().models)
    if len(names) < 2:
        return None
    return UserError(
        f"{args.server} serves {len(names)} models ({', '.join(names)}) and has no default "
        "model: name one with --model",
        f"e.g. --model {names[0]}; a server started with --default-model NAME picks one itself",
        code=USAGE,
    )


def _classify_each(
    client: Client, files: list[tuple[Path, bytes]], args: argparse.Namespace
) -> tuple[dict[Path, Any], dict[Path, str], Any]:
    """Classify the files in one request; when the server rejects it as invalid, once per file,
    so that each bad file is named and the good ones still get their answer."""
    import grpc

    kw = {
        "model": args.model,
        "top_k": args.top_k,
        "explain": args.explain_top * bool(args.explain),
    }
    try:
        reply = client.classify([data for _, data in files], **kw)
        return dict(zip((p for p, _ in files), reply.results, strict=True)), {}, reply
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise _model_choice_error(client, args) or rpc_error(exc, args) from exc
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or len(files) == 1:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return {}, {files[0][0]: f"{exc.code().name}: {exc.details()}"}, None
            raise rpc_error(exc, args) from exc
    results, failures, last = {}, {}, None
    for path, data in files:
        try:
            last = client.classify([data], **kw)
            results[path] = last.results[0]
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise rpc_error(exc, args) from exc
            failures[path] = f"{exc.code().name}: {exc.details()}"
    return results, failures, last


def _classify(args: argparse.Namespace) -> int:
    """Answer per image: each good file gets its classes, each bad one a line naming it;
    the exit status is 1 if any file failed."""
    files, failures = [], {}
    for path in args.images:
        try:
            files.append((path, path.read_bytes()))
        except OSError as exc:
            failures[path] = f"cannot read it ({exc.strerror or exc})"
    results: dict[Path, Any] = {}
    reply = None
    if files:
        with _client(args) as client:
            results, rejected, reply = _classify_each(client, files, args)
        failures.update(rejected)
    if args.explain:  # the photo with each top class's map: imgclf.overlay
        from imgclf.overlay import overlay_names, write_overlay

        names = overlay_names([p for p, _ in files])
        maps = {
            p: write_overlay(args.explain, names[p], d, results[p].maps)
            for p, d in files
            if p in results
        }
    if args.json:
        out = {
            "model": reply.model if reply else "",
            "version": reply.version if reply else 0,
            "results": [
                {"image": str(path), "error": failures[path]}
                if path in failures
                else {
                    "image": str(path),
                    **({"cam": str(maps[path])} if args.explain else {}),
                    "top": [
                        {"index": s.index, "label": s.label, "probability": s.probability}
                        for s in results[path].top
                    ],
                }
                for path in args.images
            ],
        }
        print(json.dumps(out, indent=2))
    else:
        if reply is not None:
            print(f"model {reply.model} version {reply.version}")
        for path in args.images:
            if path in failures:
                continue
            top = results[path].top
            print(f"\n{path}")
            width = max((len(s.label) for s in top), default=5)
            for rank, score in enumerate(top, 1):
                bar = "#" * round(score.probability * 30)
                line = f"  {rank:>2}. {score.label:<{width}}  {score.probability:7.2%}  {bar}"
                print(line.rstrip())
            if args.explain:
                print(f"  map: {maps[path]}")
    sys.stdout.flush()
    for path, why in failures.items():
        print(f"imgclf classify: {path}: {why}", file=sys.stderr)
    if failures:
        done = len(args.images) - len(failures)
        print(
            f"  hint: {len(failures)} of {len(args.images)} file(s) failed"
            + (f"; the other {done} were classified" if done else "")
            + " (JPEG, PNG, WebP, BMP or GIF files are accepted)",
            file=sys.stderr,
        )
        return 1
    return 0


def _models(args: argparse.Namespace) -> int:
    import grpc

    try:
        with _client(args) as client:
            reply = client.list_models()
    except grpc.RpcError as exc:
        raise rpc_error(exc, args) from exc
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

    from imgclf.client.channel import open_channel

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

    parser = argparse.ArgumentParser(
        prog="imgclf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{DEBUG_FLAG}: show the traceback of a failure (any command)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub_kw: dict[str, Any] = {"formatter_class": DefaultsHelpFormatter}

    serve = sub.add_parser("serve", help="serve the model repository over gRPC and HTTP", **sub_kw)
    add_settings_arguments(serve)
    serve.set_defaults(func=_serve)

    conn = connection_options()
    classify = sub.add_parser(
        "classify", parents=[conn], help="classify image files through a running server", **sub_kw
    )
    classify.add_argument("images", nargs="+", type=Path, help="image files")
    classify.add_argument("--model", default="", help="model name (default: the server's)")
    classify.add_argument("--top-k", type=int, default=5, help="classes per image")
    classify.add_argument("--json", action="store_true", help="print JSON")
    classify.add_argument("--explain", type=Path, metavar="DIR", help="write DIR/<name>.cam.png:"
                          " where in each photo the model found its top classes")  # fmt: skip
    classify.add_argument("--explain-top", type=int, default=3, help="classes mapped (--explain)")
    classify.set_defaults(func=_classify)

    served = sub.add_parser(
        "served-models", parents=[conn], help="list the models a running server serves", **sub_kw
    )
    served.set_defaults(func=_models)

    health = sub.add_parser(
        "health",
        parents=[connection_options()],  # its own copy: set_defaults below changes the actions
        help="exit 0 if a running server reports SERVING",
        **sub_kw,
    )
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    health.set_defaults(timeout=5.0)
    health.set_defaults(func=_health)

    from imgclf.client.bench import cli as bench_cli

    bench = sub.add_parser(
        "bench",
        help="load-test a server and compare with the machine's in-process limit",
        description=bench_cli.DESCRIPTION,
        **sub_kw,
    )
    bench_cli.add_arguments(bench)
    bench.set_defaults(func=bench_cli.run)

    for name, (_module, help_text) in TRAINING_COMMANDS.items():
        p = sub.add_parser(name, help=f"{help_text} (train extra)", add_help=False)
        p.set_defaults(func=None, training=name)
    return parser


def _training_module(command: str) -> Any:
    module_name = TRAINING_COMMANDS[command][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"torch", "torchvision", "timm", "onnx"}:
            raise UserError(
                f"this command needs the train extra (PyTorch); {exc.name} is not installed",
                TRAIN_EXTRA_HINT,
                code=USAGE,
            ) from exc
        raise


def _run(argv: list[str]) -> int:
    if argv and argv[0] in TRAINING_COMMANDS:
        module = _training_module(argv[0])
        # `run` raises a UserError the CLI reports; a job without one (shards, launch) reports
        # its own failure in one line and returns the status from `main`.
        return int(getattr(module, "run", module.main)(argv[1:]) or 0)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # say it with the subcommand's usage, not the top level's
        parser_of = {a.dest: a for a in parser._subparsers._group_actions}["command"].choices
        sub = parser_of[args.command]
        known = [o for a in sub._actions for o in a.option_strings]
        guesses = [difflib.get_close_matches(e.split("=")[0], known, n=1) for e in extra]
        hint = "; ".join(f"did you mean {g[0]}?" for g in guesses if g)
        sub.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({hint})" if hint else ""))
    return int(args.func(args))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if a != DEBUG_FLAG]
    prog = "imgclf" + (f" {words[0]}" if words and not words[0].startswith("-") else "")
    return run_main(prog, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
