"""`imgclf serve` with OpenVINO in place of ONNX Runtime, to measure it served end to end
(issue 16 item 4): a measurement harness, not a server option.

    python -m benchmarks.openvino_serve serve --model-repository DIR ...   # imgclf serve's flags
    python -m benchmarks.openvino_serve compare [--int8-file FILE] [imgclf bench's flags]

`OpenVinoEngine` offers what the server asks of `imgclf.runtime.engine.Engine` (info,
metadata_props, check_sample_shape, buckets, prepare_buckets, run, output_shape_for_one,
warmup) over OpenVINO's CPU plugin: the same ONNX file (float or INT8 QDQ), compiled once per
batch size with a static shape, ``INFERENCE_NUM_THREADS`` = the instance's intra-op threads,
the latency hint, f32 inference precision. This module replaces the engine class the model
loader builds, then runs `imgclf serve` unchanged: the same instances (one single-threaded
engine per core), solo engine, batching, warm-up and metrics. It reports its provider as
CPUExecutionProvider so that the server's CPU decisions (instances per core, the solo
session) stay the same; the load log says OpenVINO. See docs/performance.md.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from imgclf.runtime.engine import INPUT_TYPES, EngineInfo
from imgclf.runtime.options import ExecutionOptions
from imgclf.runtime.providers import CPU


class OpenVinoEngine:
    """One OpenVINO CPU model (compiled per batch size) for one model version; `run` is
    thread-safe (one lock: an instance runs one batch at a time anyway)."""

    def __init__(
        self,
        path: Path,
        options: ExecutionOptions,
        shared: object = None,
        feature: str | None = None,
    ) -> None:
        if feature is not None:
            raise ValueError("the OpenVINO harness has no feature output (class activation maps)")
        import onnxruntime as ort
        import openvino as ov

        self.options, self.shares_weights = options, False
        self._core = ov.Core()
        self._model = self._core.read_model(str(path))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        meta = ort.InferenceSession(str(path), so, providers=[CPU])
        inp, out = meta.get_inputs()[0], meta.get_outputs()[0]
        self.metadata_props = dict(meta.get_modelmeta().custom_metadata_map)
        self._dtype = INPUT_TYPES[inp.type]
        self._compiled: dict[int, object] = {}
        self._lock = threading.Lock()
        self.info = EngineInfo(
            provider=CPU, reason=f"OpenVINO {ov.__version__} CPU plugin (measurement harness)",
            input_name=inp.name, output_name=out.name, input_shape=tuple(inp.shape),
            output_shape=tuple(out.shape), input_type=inp.type,
        )  # fmt: skip
        self.buckets: list[int] = []

    def _request(self, batch: int) -> object:
        request = self._compiled.get(batch)
        if request is None:
            model = self._model.clone()
            dims = [d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:]]
            model.reshape([batch, *dims])
            compiled = self._core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": max(1, self.options.intra_op_threads),
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
            })  # fmt: skip
            request = self._compiled[batch] = compiled.create_infer_request()
        return request

    def check_sample_shape(self, shape: tuple[int, ...]) -> None:
        from imgclf.runtime.engine import Engine

        Engine.check_sample_shape(self, shape)  # type: ignore[arg-type]

    def prepare_buckets(self, sizes: list[int], sample_shape: tuple[int, ...]) -> None:
        for n in sizes:  # compile every bucket's size now rather than at the first request
            self.run(np.zeros((n, *sample_shape), dtype=self._dtype))

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self._dtype)
        with self._lock:
            request = self._request(len(batch))
            request.infer({0: batch})  # type: ignore[attr-defined]
            out = request.get_output_tensor(0).data.copy()  # type: ignore[attr-defined]
        return out.astype(np.float32, copy=False)

    def output_shape_for_one(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.run(np.zeros((1, *sample_shape), dtype=self._dtype)).shape)

    def warmup(self, batch_sizes: list[int], sample_shape: tuple[int, ...]) -> None:
        for n in batch_sizes:
            self.run(np.zeros((n, *sample_shape), dtype=np.float32))


def compare(argv: list[str]) -> int:
    """ONNX Runtime and OpenVINO servers (both started here, on the same temporary repository
    of FP32 and INT8 copies: `imgclf bench --variants`'s), measured in turn every round with
    `imgclf bench`'s runner (--concurrency, --input, --duration ... as for the bench); the
    table gives each arm's ratios to ONNX Runtime FP32."""
    import argparse
    import contextlib
    import tempfile

    from imgclf.client.bench import cli as bench_cli
    from imgclf.client.bench import runner, variants
    from imgclf.client.bench.launcher import free_port, launch, serving, wait_serving

    parser = argparse.ArgumentParser(prog="benchmarks.openvino_serve compare")
    bench_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    tags = ["fp32", "int8"]
    started = variants.load_average()
    rounds: list[dict[str, list[dict]]] = []
    with tempfile.TemporaryDirectory(prefix="imgclf-ov-") as tmp, contextlib.ExitStack() as st:
        repo = Path(tmp) / "repo"
        names = variants.make_repository(repo, args.model_repository / args.model, tags,
                                         args.int8_file)  # fmt: skip
        ort_server = st.enter_context(serving(repo, "--no-http", runner.say))
        grpc_port, metrics_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "benchmarks.openvino_serve", "serve", "--no-http",
               "--model-repository", str(repo), "--host", "127.0.0.1",
               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]  # fmt: skip
        proc = launch(cmd, Path(tmp) / "ov.log")
        st.callback(lambda: (proc.terminate(), proc.wait(60)))
        wait_serving(f"127.0.0.1:{grpc_port}", proc, Path(tmp) / "ov.log")
        targets = {
            "ort": (ort_server.target, ort_server.metrics_url),
            "openvino": (f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics"),
        }
        for r in range(args.rounds):
            rounds.append({})
            for engine, (target, metrics) in targets.items():
                for tag in tags:
                    runner.say(f"round {r + 1}/{args.rounds}: {engine} {tag}")
                    one = argparse.Namespace(**{
                        **vars(args), "model": names[tag], "target": target,
                        "metrics_url": metrics, "start_server": False, "rounds": 1,
                        "model_repository": repo,
                    })  # fmt: skip
                    rounds[-1][f"{engine}/{tag}"] = runner.execute(one)["points"]
    arms = [f"{e}/{t}" for e in targets for t in tags]
    print(variants.text({
        "model": args.model, "variants": arms, "input": args.input, "rounds_run": len(rounds),
        "int8_file": str(args.int8_file), "int8_gate": None,
        "load_average": {"start": started, "end": variants.load_average()},
        "comparison": variants.compare(rounds, arms),
    }))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    from imgclf import cli

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare(argv[1:])
    from imgclf.models import loader, sessions

    sessions.Engine = OpenVinoEngine  # type: ignore[misc,assignment]
    loader.Engine = OpenVinoEngine  # type: ignore[misc,assignment]
    sessions.share_weights = lambda path, options: None  # type: ignore[assignment]
    # No feature output in this harness: its models serve without class activation maps.
    loader.inspect_head = lambda path, config: loader.Explaining(  # type: ignore[assignment]
        None, "served by the OpenVINO measurement harness (no class activation maps)"
    )
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
