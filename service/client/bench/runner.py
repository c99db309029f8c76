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
from dataclasses import dataclass
from pathlib import Path

import grpc

from imgclf.client.bench import http_wire, inputs, limit, load, report, stats, wire
from imgclf.client.bench.floor import FloorServer
from imgclf.client.bench.launcher import server_or_target
from imgclf.client.bench.ratios import PLAIN, explain_arm, explain_costs, protocol_ratios


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
                 "versions": list(m.versions), "precision": m.metadata.get("precision", ""),
                 "explain": m.explain}
        for m in reply.models
    }  # fmt: skip


@dataclass
class Plan:
    """What one run does, resolved from the arguments before anything starts."""

    size: tuple[int, int] | None
    concurrency: list[int]
    rates: list[float]
    serve: bool
    draft: bool
    photos: list[tuple[str, bytes]]
    path: Path | None
    spec: inputs.ModelSpec | None
    cores: int


def make_plan(args: argparse.Namespace) -> Plan:
    concurrency = args.concurrency if args.concurrency is not None else (
        [] if args.rate else [1, 4, 16])  # fmt: skip
    rates = args.rate
    if args.limit_only:
        args.limit, concurrency, rates = True, [], []
    if args.batch_size < 1 or args.client_processes < 1 or args.rounds < 1:
        raise ValueError("--batch-size, --client-processes and --rounds must be >= 1")
    if "http" in args.protocol and args.api != "oip":
        raise ValueError("--protocol http sends Open Inference requests: add --api oip")
    if args.explain and (args.explain < 0 or args.protocol != ["grpc"]):
        raise ValueError("--explain K (K >= 1) measures gRPC requests: drop --protocol http")
    if "http" in args.protocol and (args.tls_ca or args.tls_cert):
        raise ValueError("the bench's HTTP client speaks plaintext only")
    draft = args.limit_jpeg_draft
    if draft is None:
        draft = "--no-jpeg-draft" not in args.server_args.split()
    size = inputs.parse_size(args.image_size)
    path = args.model_path or inputs.default_model_path(args.model_repository, args.model)
    if args.model_path and not args.model_path.is_file():
        raise FileNotFoundError(f"--model-path {args.model_path} does not exist")
    spec = inputs.spec_from_onnx(args.model, path) if path else None
    if args.limit and spec is None:
        raise ValueError(f"--limit runs the model file itself: no {args.model_repository}/"
                         f"{args.model}/<version>/model.onnx; give --model-path")  # fmt: skip
    return Plan(
        size, concurrency, rates, bool(concurrency or rates), draft, inputs.jpeg_images(size),
        path, spec, args.limit_cores or limit.usable_cores(),
    )  # fmt: skip


def new_result(args: argparse.Namespace, plan: Plan) -> dict:
    photos = plan.photos
    return {
        "api": args.api, "target": args.target, "model": {"name": args.model},
        "protocols": args.protocol,
        "inputs": {
            "kind": args.input, "size": "x".join(map(str, plan.size)) if plan.size else "native",
            "photos": [n for n, _ in photos],
            "mean_jpeg_bytes": sum(len(b) for _, b in photos) / len(photos),
            "images_per_request": args.batch_size,
        },
        "machine": {"cores": limit.usable_cores(), "platform": platform.platform(),
                    "python": platform.python_version(), "pid": os.getpid()},
        "client_processes": args.client_processes, "rounds": args.rounds,
        "started_server": args.start_server and plan.serve, "limit": None, "points": [],
    }  # fmt: skip


def items_for(args: argparse.Namespace, plan: Plan, spec: inputs.ModelSpec | None) -> list:
    if args.input == "jpeg":
        return [b for _, b in plan.photos]
    if args.input == "pixels":
        return [t for _, t in inputs.pixels(plan.photos, spec)]
    return [t for _, t in inputs.tensors(plan.photos, spec)]


def write_perf_analyzer_data(args: argparse.Namespace, plan: Plan, result: dict) -> dict:
    """A utility: write the inputs for perf_analyzer --input-data, nothing else."""
    spec = plan.spec
    if args.input != "jpeg" and spec is None:
        raise ValueError("--perf-analyzer-data with tensors needs the model file (--model-path)")
    name = args.input_name or (spec.input_name if spec else "input")
    data = wire.perf_analyzer_data(
        items_for(args, plan, spec), input_name=name, image_input_name=args.image_input_name
    )
    args.perf_analyzer_data.write_text(json.dumps(data) + "\n")
    say(f"wrote {args.perf_analyzer_data}: {len(data['data'])} {args.input} inputs for "
        "perf_analyzer --input-data")  # fmt: skip
    result["perf_analyzer_data"] = str(args.perf_analyzer_data)
    if spec is not None:
        result["model"] = spec.as_dict()
    return result


class LimitRounds:
    """The machine's limit, once per round; later rounds run only the configurations that
    set the limit in the first."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args, self.plan, self.rounds = args, plan, []

    def run(self) -> dict:
        args, plan = self.args, self.plan
        configs = limit.limit_configs(plan.cores, args.limit_batch)
        if self.rounds:
            first = self.rounds[0]
            keep = {first["best_config"], first["p50_config"], first["best_cpu_config"]}
            configs = [c for c in configs if c.name in keep]
        draft = plan.draft and args.input == "jpeg"
        say(f"limit: {plan.path} on CPUExecutionProvider, {plan.cores} cores, no server work"
            f"{', JPEG draft decoding' if draft else ''}")  # fmt: skip
        got = limit.measure_limit(
            plan.path, items_for(args, plan, plan.spec), plan.spec.preprocessing,
            configs=configs, jpeg_draft=plan.draft, pixel_input=plan.spec.pixel_input,
            warmup=min(args.warmup, 2.0), duration=args.limit_duration, progress=say,
        )  # fmt: skip
        self.rounds.append(got)
        return got

    @property
    def last(self) -> dict | None:
        return self.rounds[-1] if self.rounds else None


def execute(args: argparse.Namespace) -> dict:
    plan = make_plan(args)
    result = new_result(args, plan)
    if args.perf_analyzer_data:
        return write_perf_analyzer_data(args, plan, result)
    limits = LimitRounds(args, plan)
    if args.limit:
        import onnxruntime

        result["machine"]["onnxruntime"] = onnxruntime.__version__
        limits.run()  # the first round's limit runs before any server starts
    point_rounds: list[list[dict]] = []
    if plan.serve:
        serve_and_measure(args, plan, limits, result, point_rounds)
    elif args.limit:
        for _ in range(args.rounds - 1):
            limits.run()
    if plan.spec is not None:
        result["model"] = plan.spec.as_dict()
    if limits.rounds:
        result["limit"] = limit.combine_limits(limits.rounds)
    result["points"] = [stats.combine_points(list(per)) for per in zip(*point_rounds, strict=True)]
    if len(args.protocol) > 1 and point_rounds:
        result["protocol_ratios"] = protocol_ratios(point_rounds)
    if args.explain and point_rounds:
        result["explain_costs"] = explain_costs(point_rounds)
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result


def serve_and_measure(
    args: argparse.Namespace, plan: Plan, limits: LimitRounds, result: dict,
    point_rounds: list[list[dict]],
) -> None:  # fmt: skip
    """The served part: the server (started or given), a probe, then every point per round
    (the limit again before each later round), appended to `point_rounds`."""
    tls = {"tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key}
    with contextlib.ExitStack() as stack:
        where = stack.enter_context(server_or_target(
            None if args.start_server else args.target, args.model_repository,
            args.server_args, say=say, **tls,
        ))  # fmt: skip
        target = where.address
        metrics_url = args.metrics_url
        if metrics_url is None:
            metrics_url = where.metrics_url or f"http://{target.rsplit(':', 1)[0]}:8002/metrics"
        connection = wire.Connection.from_files(
            target, args.tls_ca, args.tls_cert, args.tls_key, args.token_file
        )
        plan.spec = resolve_spec(args, plan.spec, connection)
        result["server_model"] = _server_models(connection).get(args.model)
        method, payloads = grpc_payloads(args, plan)
        reply = probe(args, connection, method, payloads[0])
        if metrics_url and load.try_fetch(metrics_url) is None:
            say(f"no metrics at {metrics_url}: no server stage breakdown")
            metrics_url = None
        result.update(target=target, metrics_url=metrics_url)
        runners = {}  # arm -> (protocol, runner)
        arms = {"grpc": payloads} if "grpc" in args.protocol else {}
        if args.explain:
            _, explained = grpc_payloads(args, plan, args.explain)
            probe(args, connection, method, explained[0], args.explain)
            arms = {PLAIN: payloads, explain_arm(args.explain): explained}
        for arm, requests in arms.items():
            runners[arm] = ("grpc", stack.enter_context(load.LoadRunner(
                connection, method, requests, args.client_processes, args.request_timeout
            )))  # fmt: skip
        if "http" in args.protocol:
            http_target = args.http_target or (
                f"{where.server.host}:{where.server.http_port}"
                if where.server is not None and where.server.http_port
                else f"{target.rsplit(':', 1)[0]}:8000"
            )
            runners["http"] = ("http", stack.enter_context(http_load_runner(
                args, plan.spec, items_for(args, plan, plan.spec), http_target, connection.token
            )))  # fmt: skip
            result["http_target"] = http_target
        floor = None
        if args.floor:
            say("starting the floor server (bare gRPC answering the probe's reply)")
            floor = stack.enter_context(FloorServer(method, reply))
            floor_runner = stack.enter_context(load.LoadRunner(
                wire.Connection(floor.target), method, payloads, args.client_processes,
                args.request_timeout,
            ))  # fmt: skip
        for r in range(args.rounds):
            if r and args.limit:
                limits.run()
            point_rounds.append([])
            for point in load_points(args, plan):
                tag = f" (round {r + 1}/{args.rounds})" if args.rounds > 1 else ""
                for arm, (protocol, runner) in runners.items():  # A B A B: the same noise
                    name = f" {arm}" if len(runners) > 1 else ""
                    say(f"served {point.label}{name}: {args.warmup:g}s warm-up + "
                        f"{args.duration:g}s{tag} ...")  # fmt: skip
                    measured = measure_point(runner, point, metrics_url, args, limits.last)
                    measured["protocol"], measured["arm"] = protocol, arm
                    if len(runners) > 1:
                        measured["load"] = f"{point.label} {arm}"
                    if floor is not None and arm in ("grpc", PLAIN):
                        say(f"floor {point.label} ...")
                        measured["floor"] = measure_floor(
                            floor_runner, point, args, measured, floor.cpu_seconds
                        )
                    point_rounds[-1].append(measured)
    if where.server is not None:
        result["server_exit_code"] = where.server.proc.returncode


def resolve_spec(
    args: argparse.Namespace, spec: inputs.ModelSpec | None, connection: wire.Connection
) -> inputs.ModelSpec | None:
    """The model's inputs: from the local file, else as the server describes them."""
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
    return spec


def grpc_payloads(args: argparse.Namespace, plan: Plan, explain: int = 0) -> tuple[str, list]:
    """The method and requests of the run (asking for `explain` maps per image)."""
    return wire.build_payloads(
        args.api, args.model, items_for(args, plan, plan.spec), args.batch_size,
        input_name=args.input_name or (plan.spec.input_name if plan.spec else "input"),
        image_input_name=args.image_input_name, output_name=args.output_name,
        top_k=args.top_k, explain=explain,
    )  # fmt: skip


def probe(
    args: argparse.Namespace, connection: wire.Connection, method: str, payload: bytes,
    explain: int = 0,
) -> bytes:  # fmt: skip
    """One request before the load: it must succeed and be a classification (with its maps,
    for an explained request)."""
    try:
        reply = wire.probe(connection, method, payload, args.request_timeout)
    except grpc.RpcError as exc:
        raise RuntimeError(f"probe request failed: {exc.code().name}: {exc.details()}") from None
    problem = wire.check_reply(args.api, reply, args.batch_size, explain)
    if problem:
        raise RuntimeError(f"probe reply is not a classification: {problem}")
    return reply


def load_points(args: argparse.Namespace, plan: Plan) -> list[load.Point]:
    points = [load.Point("closed", args.warmup, args.duration, concurrency=c)
              for c in plan.concurrency]  # fmt: skip
    points += [load.Point("open", args.warmup, args.duration, rate=r, arrival=args.arrival,
                          seed=args.seed, max_inflight=args.max_inflight)
               for r in plan.rates]  # fmt: skip
    return points


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


def http_load_runner(
    args: argparse.Namespace, spec: inputs.ModelSpec | None, items: list, target: str,
    token: str | None,
) -> load.LoadRunner:  # fmt: skip
    """The same requests as HTTP/1.1 binary-extension requests, probed once, and the client
    processes that send them."""
    path, payloads = http_wire.build_http_payloads(
        args.model, items, args.batch_size, target,
        input_name=args.input_name or (spec.input_name if spec else "input"),
        image_input_name=args.image_input_name, output_name=args.output_name, token=token,
    )  # fmt: skip
    status, body = http_wire.probe_http(target, payloads[0], args.request_timeout)
    problem = http_wire.check_http_reply(status, body, args.batch_size)
    if problem:
        raise RuntimeError(f"HTTP probe reply from {target} is not a classification: {problem}")
    connection = wire.Connection(target, token=token, protocol="http")
    return load.LoadRunner(connection, path, payloads, args.client_processes, args.request_timeout)
