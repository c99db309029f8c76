"""One `imgclf bench` run, in order: inputs and model, the limit, the server (started or
given), a probe request, then every load point; with --rounds, limit and points alternate
so that both see the same background load, and the report gives medians over the rounds."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import grpc

from imgclf.client.bench import inputs, limit, load, report, stats, wire
from imgclf.client.bench.floor import FloorServer
from imgclf.client.bench.launcher import serving


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _server_models(connection: wire.Connection) -> dict[str, dict]:
    """imgclf's ListModels, when the target speaks it."""
    from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
    from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc

    try:
        with connection.channel() as ch:
            reply = pb_grpc.ImageClassifierStub(ch).ListModels(
                pb.ListModelsRequest(), timeout=10, metadata=connection.metadata
            )
    except grpc.RpcError:
        return {}
    return {
        m.name: {"provider": m.provider, "max_batch_size": m.max_batch_size,
                 "versions": list(m.versions), "precision": m.metadata.get("precision", "")}
        for m in reply.models
    }  # fmt: skip


def execute(args: argparse.Namespace) -> dict:
    size = inputs.parse_size(args.image_size)
    concurrency = args.concurrency if args.concurrency is not None else (
        [] if args.rate else [1, 4, 16])  # fmt: skip
    rates = args.rate
    if args.limit_only:
        args.limit, concurrency, rates = True, [], []
    if args.batch_size < 1 or args.client_processes < 1 or args.rounds < 1:
        raise ValueError("--batch-size, --client-processes and --rounds must be >= 1")
    serve = bool(concurrency or rates)
    draft = args.limit_jpeg_draft
    if draft is None:
        draft = "--no-jpeg-draft" not in args.server_args.split()

    photos = inputs.jpeg_images(size)
    path = args.model_path or inputs.default_model_path(args.model_repository, args.model)
    if args.model_path and not args.model_path.is_file():
        raise FileNotFoundError(f"--model-path {args.model_path} does not exist")
    spec = inputs.spec_from_onnx(args.model, path) if path else None
    if args.limit and spec is None:
        raise ValueError(f"--limit runs the model file itself: no {args.model_repository}/"
                         f"{args.model}/<version>/model.onnx; give --model-path")  # fmt: skip
    cores = args.limit_cores or limit.usable_cores()
    result: dict = {
        "api": args.api, "target": args.target, "model": {"name": args.model},
        "inputs": {
            "kind": args.input, "size": "x".join(map(str, size)) if size else "native",
            "photos": [n for n, _ in photos],
            "mean_jpeg_bytes": sum(len(b) for _, b in photos) / len(photos),
            "images_per_request": args.batch_size,
        },
        "machine": {"cores": limit.usable_cores(), "platform": platform.platform(),
                    "python": platform.python_version(), "pid": os.getpid()},
        "client_processes": args.client_processes, "rounds": args.rounds,
        "started_server": args.start_server and serve, "limit": None, "points": [],
    }  # fmt: skip

    def items_for(model_spec: inputs.ModelSpec | None) -> list:
        if args.input == "jpeg":
            return [b for _, b in photos]
        if args.input == "pixels":
            return [t for _, t in inputs.pixels(photos, model_spec)]
        return [t for _, t in inputs.tensors(photos, model_spec)]

    if args.perf_analyzer_data:  # a utility: write the inputs for perf_analyzer, nothing else
        if args.input != "jpeg" and spec is None:
            raise ValueError(
                "--perf-analyzer-data with tensors needs the model file (--model-path)"
            )
        name = args.input_name or (spec.input_name if spec else "input")
        data = wire.perf_analyzer_data(
            items_for(spec), input_name=name, image_input_name=args.image_input_name
        )
        args.perf_analyzer_data.write_text(json.dumps(data) + "\n")
        say(f"wrote {args.perf_analyzer_data}: {len(data['data'])} {args.input} inputs for "
            "perf_analyzer --input-data")  # fmt: skip
        result["perf_analyzer_data"] = str(args.perf_analyzer_data)
        if spec is not None:
            result["model"] = spec.as_dict()
        return result

    limit_rounds: list[dict] = []

    def run_limit() -> dict:
        configs = limit.limit_configs(cores, args.limit_batch)
        if limit_rounds:  # later rounds: only the configs that set the limit in the first
            first = limit_rounds[0]
            keep = {first["best_config"], first["p50_config"], first["best_cpu_config"]}
            configs = [c for c in configs if c.name in keep]
        say(f"limit: {path} on CPUExecutionProvider, {cores} cores, no server work"
            f"{', JPEG draft decoding' if draft and args.input == 'jpeg' else ''}")  # fmt: skip
        got = limit.measure_limit(
            path, items_for(spec), spec.preprocessing, configs=configs, jpeg_draft=draft,
            pixel_input=spec.pixel_input, warmup=min(args.warmup, 2.0),
            duration=args.limit_duration, progress=say,
        )  # fmt: skip
        limit_rounds.append(got)
        return got

    if args.limit:
        import onnxruntime

        result["machine"]["onnxruntime"] = onnxruntime.__version__
        run_limit()  # the first round's limit runs before any server starts
    point_rounds: list[list[dict]] = []
    server = None
    with contextlib.ExitStack() as stack:
        target, metrics_url = args.target, args.metrics_url
        if serve:
            if args.start_server:
                say(f"starting imgclf serve {args.server_args}".rstrip())
                server = stack.enter_context(serving(
                    args.model_repository, args.server_args,
                    tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                ))  # fmt: skip
                target = server.target
                metrics_url = server.metrics_url if metrics_url is None else metrics_url
            connection = wire.Connection.from_files(
                target, args.tls_ca, args.tls_cert, args.tls_key, args.token_file
            )
            if metrics_url is None:
                metrics_url = f"http://{target.rsplit(':', 1)[0]}:8002/metrics"
            if spec is None:
                with connection.channel() as ch:
                    found = inputs.remote_input_shape(
                        ch, args.model, args.input_name or "input", connection.metadata
                    )
                if found is None and args.input != "jpeg":
                    raise ValueError(
                        f"cannot tell {args.model}'s input shape: no local model "
                        "file and the server does not say; give --model-path"
                    )
                spec = inputs.spec_from_shape(args.model, found[1], found[0]) if found else None
            for note in spec.notes if spec else []:
                say(note)
            result["server_model"] = _server_models(connection).get(args.model)
            method, payloads = wire.build_payloads(
                args.api, args.model, items_for(spec), args.batch_size,
                input_name=args.input_name or (spec.input_name if spec else "input"),
                image_input_name=args.image_input_name, output_name=args.output_name,
                top_k=args.top_k,
            )  # fmt: skip
            try:
                reply = wire.probe(connection, method, payloads[0], args.request_timeout)
            except grpc.RpcError as exc:
                raise RuntimeError(
                    f"probe request failed: {exc.code().name}: {exc.details()}"
                ) from None
            problem = wire.check_reply(args.api, reply, args.batch_size)
            if problem:
                raise RuntimeError(f"probe reply is not a classification: {problem}")
            if metrics_url and load.try_fetch(metrics_url) is None:
                say(f"no metrics at {metrics_url}: no server stage breakdown")
                metrics_url = None
            result.update(target=target, metrics_url=metrics_url)
            points = [load.Point("closed", args.warmup, args.duration, concurrency=c)
                      for c in concurrency]  # fmt: skip
            points += [load.Point("open", args.warmup, args.duration, rate=r,
                                  arrival=args.arrival, seed=args.seed,
                                  max_inflight=args.max_inflight) for r in rates]  # fmt: skip
            runner = stack.enter_context(load.LoadRunner(
                connection, method, payloads, args.client_processes, args.request_timeout
            ))  # fmt: skip
            floor_runner = None
            if args.floor:
                say("starting the floor server (bare gRPC answering the probe's reply)")
                floor = stack.enter_context(FloorServer(method, reply))
                floor_cpu = floor.cpu_seconds
                floor_runner = stack.enter_context(load.LoadRunner(
                    wire.Connection(floor.target), method, payloads, args.client_processes,
                    args.request_timeout,
                ))  # fmt: skip
            for r in range(args.rounds):
                if r and args.limit:
                    run_limit()
                lim = limit_rounds[-1] if limit_rounds else None
                point_rounds.append([])
                for point in points:
                    tag = f" (round {r + 1}/{args.rounds})" if args.rounds > 1 else ""
                    say(f"served {point.label}: {args.warmup:g}s warm-up + "
                        f"{args.duration:g}s{tag} ...")  # fmt: skip
                    measured = measure_point(runner, point, metrics_url, args, lim)
                    if floor_runner is not None:
                        say(f"floor {point.label} ...")
                        measured["floor"] = measure_floor(
                            floor_runner, point, args, measured, floor_cpu
                        )
                    point_rounds[-1].append(measured)
        elif args.limit:
            for _ in range(args.rounds - 1):
                run_limit()
    if server is not None:
        result["server_exit_code"] = server.proc.returncode
    if spec is not None:
        result["model"] = spec.as_dict()
    if limit_rounds:
        result["limit"] = limit.combine_limits(limit_rounds)
    result["points"] = [stats.combine_points(list(per)) for per in zip(*point_rounds, strict=True)]
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result


def measure_point(
    runner: load.LoadRunner, point: load.Point, metrics_url: str | None,
    args: argparse.Namespace, lim: dict | None,
) -> dict:  # fmt: skip
    got = runner.run(point, metrics_url, args.model)
    summary = stats.summarise(got.records, *got.window, args.batch_size).as_dict()
    if point.kind == "open" and summary["send_lag_p99_ms"] > 5:
        say(f"  note: sends lagged the schedule (p99 {summary['send_lag_p99_ms']:.1f} ms): "
            "the client may be a bottleneck; try --client-processes")  # fmt: skip
    return {
        "load": point.label, "kind": point.kind, "concurrency": point.concurrency,
        "rate": point.rate, "duration_s": point.duration, "summary": summary,
        "server": got.server, "vs_limit": report.vs_limit(summary, lim, got.server),
    }  # fmt: skip


def measure_floor(
    runner: load.LoadRunner, point: load.Point, args: argparse.Namespace, served: dict,
    cpu_seconds: Callable[[], float | None],
) -> dict:  # fmt: skip
    """The same point against the floor server, and the served point over it; the CPU
    milliseconds per request of both servers, when known."""
    got = runner.run(point, None, args.model, cpu_seconds)
    summary = stats.summarise(got.records, *got.window, args.batch_size).as_dict()
    rps, p50 = summary["throughput_rps"], summary["latency_ms"]["p50"]
    s = served["summary"]
    return {
        "throughput_rps": rps,
        "p50_ms": p50,
        "p99_ms": summary["latency_ms"]["p99"],
        "errors": sum(summary["errors"].values()),
        "client_cpu_cores": summary["client_cpu_cores"],
        "served_over_floor": s["throughput_rps"] / rps if rps else None,
        "p50_minus_floor_ms": s["latency_ms"]["p50"] - p50 if p50 is not None else None,
        "server_cpu_ms_per_request": per_request_ms(got.server.get("server_cpu_cores"), rps),
        "served_cpu_ms_per_request": per_request_ms(
            served["server"].get("server_cpu_cores"), s["throughput_rps"]
        ),
    }


def per_request_ms(cores: object, rps: float) -> float | None:
    return 1000.0 * cores / rps if isinstance(cores, float) and rps else None
