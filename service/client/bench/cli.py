"""`imgclf bench`: load-test a running server (ours or any Open Inference Protocol server) and
compare it with the machine's own limit on the same inputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.client.bench import IMAGE_SIZES, MissingDependency

DESCRIPTION = __doc__


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be >= 1: {text!r}")
    return values


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"every rate must be > 0: {text!r}")
    return values


def _protocols(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if (
        not values
        or any(v not in ("grpc", "http") for v in values)
        or len(set(values)) != len(values)
    ):
        raise argparse.ArgumentTypeError(f"grpc, http or grpc,http: {text!r}")
    return values


def _variants(text: str) -> list[str]:
    from imgclf.client.bench.variants import parse_variants

    return parse_variants(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    t = parser.add_argument_group("target")
    t.add_argument("--target", default="127.0.0.1:8001", help="HOST:PORT of the gRPC server")
    t.add_argument("--api", choices=("imgclf", "oip"), default="imgclf",
                   help="imgclf: Classify; oip: Open Inference Protocol ModelInfer")  # fmt: skip
    t.add_argument(
        "--protocol", type=_protocols, default=["grpc"],
        help="grpc, http (Open Inference over HTTP, binary tensor data; needs --api oip), or "
        "grpc,http: both, each point measured over one then the other, round after round",
    )  # fmt: skip
    t.add_argument("--http-target", default=None,
                   help="HOST:PORT of the HTTP port (default: the target host, port 8000, or "
                   "the started server's)")  # fmt: skip
    t.add_argument("--model", default="efficientnet_lite0", help="model name")
    t.add_argument(
        "--input-name",
        default=None,
        help="oip tensor input name (default: the local model's, else 'input')",
    )
    t.add_argument("--image-input-name", default="image", help="oip BYTES input name")
    t.add_argument(
        "--output-name",
        default="probabilities",
        help="oip output to ask for ('' = every output; 'logits' for Triton)",
    )
    t.add_argument("--top-k", type=int, default=0, help="imgclf API top_k (0: server default)")
    t.add_argument(
        "--explain", type=int, default=0, metavar="K",
        help="also send explained requests (the class activation maps of each image's top K "
        "classes: Classify explain.top_k, or the oip output 'cam'): each point measured plain "
        "then explained, round after round, and their cost per image compared",
    )  # fmt: skip
    t.add_argument("--metrics-url", default=None,
                   help="Prometheus endpoint for the stage breakdown ('' = off; default: "
                   "http://HOST:8002/metrics, or the started server's)")  # fmt: skip
    t.add_argument("--tls-ca", type=Path, help="CA certificate (PEM): connect with TLS")
    t.add_argument("--tls-cert", type=Path, help="client certificate (PEM), mutual TLS")
    t.add_argument("--tls-key", type=Path, help="client private key (PEM), mutual TLS")
    t.add_argument("--token-file", type=Path, help="file with a bearer token")
    i = parser.add_argument_group("inputs")
    i.add_argument("--input", choices=("jpeg", "tensor", "pixels"), default="jpeg",
                   help="jpeg: real photos, encoded; tensor: preprocessed float32; pixels: "
                        "uint8 at the model input size, resized and cropped (the server "
                        "normalises them, or the model does)")  # fmt: skip
    i.add_argument(
        "--image-size",
        default="0.3mp",
        help=f"photo size: {', '.join(IMAGE_SIZES)}, native or WxH (default 0.3mp)",
    )
    i.add_argument("--batch-size", type=int, default=1, help="images per request")
    i.add_argument(
        "--model-repository",
        type=Path,
        default=Path("models"),
        help="where --model-path defaults from and --start-server serves",
    )
    i.add_argument(
        "--model-path",
        type=Path,
        help="local ONNX file (default: models/<model>/<newest>/model.onnx)",
    )
    g = parser.add_argument_group("load")
    g.add_argument("--concurrency", type=_ints, default=None,
                   help="closed loop: comma-separated client counts (default 1,4,16 when "
                   "no --rate)")  # fmt: skip
    g.add_argument("--rate", type=_floats, default=[], help="open loop: req/s, comma-separated")
    g.add_argument(
        "--arrival",
        choices=("constant", "poisson"),
        default="constant",
        help="open-loop arrival process",
    )
    g.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    g.add_argument("--warmup", type=float, default=2.0, help="seconds before each point")
    g.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="client processes, each with its own event loop",
    )
    g.add_argument(
        "--max-inflight",
        type=int,
        default=1000,
        help="open loop: requests in flight per client process at most",
    )
    g.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request")
    g.add_argument("--seed", type=int, default=0, help="Poisson arrivals seed")
    m = parser.add_argument_group("limit and server")
    m.add_argument(
        "--limit",
        action="store_true",
        help="also measure the in-process limit (no server) on the same inputs",
    )
    m.add_argument("--limit-only", action="store_true", help="measure only the limit")
    m.add_argument("--limit-duration", type=float, default=5.0, help="seconds per config")
    m.add_argument("--limit-batch", type=_ints, default=[1, 4], help="batch sizes (1,4)")
    m.add_argument("--limit-cores", type=int, default=0, help="cores to use (0: all usable)")
    m.add_argument(
        "--limit-jpeg-draft",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode JPEGs in draft mode in the limit, as the server does by "
        "default (default: on unless --server-args has --no-jpeg-draft)",
    )
    m.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternate limit and served measurements this many times; report "
        "medians and the range of img/s (one round's figures move from run to run)",
    )
    m.add_argument(
        "--start-server",
        action="store_true",
        help="start `imgclf serve` on free ports for the run, stop it after",
    )
    m.add_argument("--server-args", default="", help="extra `imgclf serve` arguments")
    m.add_argument(
        "--variants", type=_variants, default=None, metavar="fp32,int8",
        help="with --start-server: serve these precision variants of --model side by side "
        "(one copy each, config.json precision forced), measure them in alternation every "
        "round and print each one's ratios to the first",
    )  # fmt: skip
    m.add_argument(
        "--int8-file", type=Path, default=None,
        help="--variants: the INT8 file to serve (default: the version's model.int8.onnx); "
        "one that failed the accuracy gate measures speed only",
    )  # fmt: skip
    m.add_argument(
        "--floor",
        action="store_true",
        help="also drive a bare gRPC server (same options, canned reply, no model) with the "
        "same requests at each load point: what the gRPC stack alone costs",
    )
    o = parser.add_argument_group("output")
    o.add_argument("--json", type=Path, help="write everything as JSON here")
    o.add_argument("--plot", type=Path, help="PNG: throughput and latency (matplotlib)")
    o.add_argument(
        "--perf-analyzer-data", type=Path, metavar="FILE",
        help="only write the inputs (--input, --image-size) as perf_analyzer --input-data JSON",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """The bench: measure, print the tables, write --json / --plot. Exit 0, 1 (failed), 2
    (a missing optional dependency)."""
    try:
        from imgclf.client.bench import report, runner, variants

        if args.variants:
            result = variants.execute(args)
            print(variants.text(result))
            if args.json:
                report.write_json(args.json, result)
            return 0
        result = runner.execute(args)
        if "perf_analyzer_data" not in result:
            print(report.text(result))
        if args.json:
            report.write_json(args.json, result)
            runner.say(f"wrote {args.json}")
        if args.plot and result["points"]:
            report.plot(args.plot, result)
            runner.say(f"wrote {args.plot}")
    except MissingDependency as exc:
        print(f"imgclf bench: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"imgclf bench: {exc}", file=sys.stderr)
        return 1
    return 0
