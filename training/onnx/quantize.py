"""INT8 variants of a float ONNX classifier, refused unless they keep its accuracy.

Recipe (``quantize_int8``): ONNX Runtime's quantisation pre-processing (symbolic shape
inference, graph optimisation), then static quantisation in QDQ format with unsigned 8-bit
activations and signed 8-bit per-channel weights: the combination ONNX Runtime's x86 kernels
run fastest on CPUs with VNNI (per-tensor weights ruin depthwise convolutions, per-channel is
required). On ARM64 the same QDQ file runs (ORT's kernels take U8 or S8 activations there);
on GPUs run the float model (FP16 or TensorRT), not this one.

Calibration images are a class-stratified sample of the training split (disjoint from the
validation images the gate measures on), preprocessed exactly as the server does
(imgclf.imaging, the eval preset). Methods: MinMax, Percentile, Entropy.

Gate (imgclf.training.onnx.accuracy_gate): the INT8 model against the float model on the same
images through
ONNX Runtime: top-1 accuracy drop, top-1 agreement with float, the largest per-class recall
drop (with labels), and the largest probability difference (reported). A model that fails is
never written; the report names the tensors whose quantisation hurt most
(``worst_tensors``: onnxruntime.quantization.qdq_loss_debug), whose producing nodes can be
kept in float on a retry.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from imgclf.runtime.options import ExecutionOptions, session_options
from imgclf.training.onnx.accuracy_gate import GateReport, GateThresholds, accuracy_gate, softmax
from imgclf.training.onnx.heads import activation_head
from imgclf.training.onnx.keepfloat import keep_in_float
from imgclf.training.onnx.sensitivity import weight_sensitivity

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_CALIBRATION_IMAGES = 300
DEFAULT_PERCENTILE = 99.999
CALIBRATION_BATCH = 16
OP_TYPES = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Pad", "Clip", "Relu",
    "GlobalAveragePool", "AveragePool", "MaxPool",
)  # fmt: skip
"""The operators quantised: the compute and the activations around it. Not the float
arithmetic some exporters leave in the graph to compute shapes at run time (the TF "same"
padding of timm's tf_* models: Shape -> Sub/Div/Ceil/Mul -> Pad amounts), which quantising
corrupts: on EfficientNet-Lite0, top-1 agreement with FP32 on the evaluation photos is 77.8 %
(every operator) against 88.9 % (these), with exact integer kernels."""
QUANTIZATION = "static QDQ, QUInt8 activations, QInt8 per-channel weights"
WEIGHT_BITS = (8, 7)
"""Signed weight range: 8 bits ([-127, 127]), or 7 ([-64, 64], ONNX Runtime's reduce_range),
which x86 CPUs without VNNI multiply exactly at full speed: there ONNX Runtime's fast U8S8
kernels add pairs of u8 x s8 products in 16 bits, which 255 x 64 x 2 = 32640 fits and
255 x 127 x 2 does not (imgclf.runtime.options)."""


@dataclass(frozen=True)
class Calibration:
    method: str = DEFAULT_CALIBRATION_METHOD
    percentile: float = DEFAULT_PERCENTILE
    """Percentile method only: the activation percentile kept in range."""
    keep_float: tuple[str, ...] = ()
    """Node names left unquantised."""
    weight_bits: int = 8
    """8, or 7 (WEIGHT_BITS)."""

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}")
        if self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"weight bits must be one of {WEIGHT_BITS}, got {self.weight_bits}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")


class ArrayReader:
    """An onnxruntime.quantization CalibrationDataReader over an array, in batches."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int = CALIBRATION_BATCH):
        self.input_name = input_name
        self.inputs = inputs
        self.batch = batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.inputs), self.batch):
            yield {self.input_name: self.inputs[start : start + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._batches()

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch)


def calibration_batch(method: str, count: int) -> int:
    """The calibration batch size: the histogram calibrators (percentile, entropy) stack the
    batches' activations, so every batch must have the same size: the largest divisor of
    `count` up to CALIBRATION_BATCH."""
    if method == "minmax":
        return CALIBRATION_BATCH
    return max(b for b in range(1, CALIBRATION_BATCH + 1) if count % b == 0)


def _input_name(model: Path) -> str:
    proto = onnx.load(str(model), load_external_data=False)
    weights = {i.name for i in proto.graph.initializer}
    return next(i.name for i in proto.graph.input if i.name not in weights)


def preprocess_for_quantization(float_model: Path, out: Path) -> Path:
    """ONNX Runtime's quantisation pre-processing of `float_model` into `out`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(float_model), str(out), skip_symbolic_shape=False)
    return out


def quantize_int8(
    prepared: Path, calibration_inputs: np.ndarray, calibration: Calibration, out: Path
) -> Path:
    """Statically quantise the pre-processed float model `prepared` into `out` (QDQ, U8
    activations, S8 per-channel weights), calibrated on `calibration_inputs` (preprocessed
    as the server does)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    n = len(calibration_inputs)
    if n < 1:
        raise ValueError("calibration needs at least one image")
    method_name = calibration.method
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[calibration.method]
    quantize_static(
        str(prepared),
        str(out),
        ArrayReader(_input_name(prepared), calibration_inputs, calibration_batch(method_name, n)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=calibration.weight_bits == 7,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        nodes_to_exclude=list(calibration.keep_float) or None,
        op_types_to_quantize=list(OP_TYPES),
        extra_options={"CalibPercentile": calibration.percentile},
    )
    if calibration.keep_float:  # and keep them in float when ONNX Runtime loads the model
        proto = onnx.load(str(out))
        keep_in_float(proto, calibration.keep_float)
        onnx.save(proto, str(out))
    return out


def run_probabilities(
    model: Path | str, inputs: np.ndarray, output: str = "logits", batch: int = 32
) -> np.ndarray:
    """(N, classes) float64 probabilities of `model` on `inputs` through ONNX Runtime (CPU),
    with the server's session options: on an x86 CPU without VNNI, ORT's default INT8 kernels
    saturate (imgclf.runtime.options.EXACT_INT8_PRODUCTS), and the gate must measure the
    arithmetic the server runs."""
    so = session_options(ExecutionOptions(providers="cpu"))
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)
    ]
    out = np.concatenate(chunks).astype(np.float64)
    return softmax(out) if output == "logits" else out


def worst_tensors(
    prepared: Path, int8_model: Path, inputs: np.ndarray, top: int = 5
) -> list[dict[str, Any]]:
    """The `top` nodes that lose the most signal to quantisation noise between the float
    model `prepared` and `int8_model` on `inputs` (onnxruntime.quantization.qdq_loss_debug):
    for each float activation, its SQNR float vs INT8 (dB, the error accumulated so far) and
    how much lower that is than its node's worst input's (the loss this node adds). Each row
    names the node (a candidate for ``keep_float``); largest loss first."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    proto = onnx.load(str(prepared))
    producer = {out: node for node in proto.graph.node for out in node.output}
    name = _input_name(prepared)
    with tempfile.TemporaryDirectory(prefix="imgclf-qdq-debug-") as tmp:
        aug_float, aug_int8 = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        modify_model_output_intermediate_tensors(str(prepared), str(aug_float))
        modify_model_output_intermediate_tensors(str(int8_model), str(aug_int8))
        providers = ["CPUExecutionProvider"]
        float_acts = collect_activations(
            str(aug_float), ArrayReader(name, inputs), execution_providers=providers
        )
        int8_acts = collect_activations(
            str(aug_int8), ArrayReader(name, inputs), execution_providers=providers
        )
    matched = create_activation_matching(int8_acts, float_acts)
    accumulated: dict[str, float] = {}
    for tensor, match in matched.items():
        post, ref = match.get("post_qdq"), match.get("float")
        if post is None or ref is None or [a.shape for a in ref] != [a.shape for a in post]:
            continue  # not quantised, or a name the optimiser reused for another tensor
        if not np.issubdtype(ref[0].dtype, np.floating):
            continue
        accumulated[tensor] = sqnr_db(ref, post)
    memo: dict[str, list[float]] = {}

    def upstream(t: str) -> list[float]:
        """The SQNRs of the nearest quantised tensors `t` is computed from."""
        if t in accumulated:
            return [accumulated[t]]
        if t not in memo:
            memo[t] = []  # guards re-entry
            node = producer.get(t)
            memo[t] = [v for i in (node.input if node is not None else ()) for v in upstream(i)]
        return memo[t]

    rows = []
    for tensor, x in accumulated.items():
        node = producer.get(tensor)
        before = [v for i in (node.input if node is not None else ()) for v in upstream(i)]
        lost = (min(before) if before else IDEAL_8BIT_SQNR_DB) - x
        rows.append((lost, x, tensor, node.name if node is not None else ""))
    rows.sort(reverse=True)
    return [
        {"tensor": t, "node": n, "sqnr_lost_db": lost, "float_vs_int8_sqnr_db": x}
        for lost, x, t, n in rows[:top]
    ]


IDEAL_8BIT_SQNR_DB = 6.02 * 8 + 1.76
"""What a tensor with no quantised input (the graph input) is measured against: the SQNR of
an ideal 8-bit quantiser of a full-scale signal."""


def sqnr_db(signal: Sequence[np.ndarray], noisy: Sequence[np.ndarray]) -> float:
    """Signal-to-noise ratio in dB of `noisy` against `signal` (batches concatenated)."""
    a = np.concatenate([x.ravel() for x in signal]).astype(np.float64)
    b = np.concatenate([x.ravel() for x in noisy]).astype(np.float64)
    noise = max(float(np.linalg.norm(a - b)), 1e-12)
    return 20.0 * float(np.log10(max(float(np.linalg.norm(a)), 1e-12) / noise))


@dataclass
class QuantizeResult:
    path: Path | None
    """The INT8 file written; None when every calibration failed the gate."""
    calibration: Calibration
    gate: GateReport
    attempts: list[tuple[Calibration, GateReport]]
    worst: list[dict[str, Any]] = field(default_factory=list)
    """After a failure: the tensors that hurt most (the last attempt)."""
    sensitive: list[dict[str, Any]] = field(default_factory=list)
    """After a failure: the layers whose INT8 weights alone cost the output most."""


def quantization(weight_bits: int) -> str:
    """The recipe, as the INT8 model's metadata says it."""
    if weight_bits == 8:
        return QUANTIZATION
    return f"{QUANTIZATION} in {weight_bits} bits (exact at full speed without VNNI)"


def int8_props(
    float_props: dict[str, str],
    calibration: Calibration,
    calibration_source: dict[str, Any],
    gate: GateReport,
    gate_source: str,
) -> dict[str, str]:
    """The INT8 model's metadata_props: the float model's, plus precision, calibration and
    the measured accuracies (each value JSON)."""
    cal = {"method": calibration.method, **calibration_source}
    if calibration.method == "percentile":
        cal["percentile"] = calibration.percentile
    if calibration.keep_float:
        cal["keep_float"] = list(calibration.keep_float)
    if calibration.weight_bits != 8:
        cal["weight_bits"] = calibration.weight_bits
    gate_record = {**gate.to_dict(), "images_from": gate_source}
    return {
        **float_props,
        "precision": json.dumps("int8"),
        "quantization": json.dumps(quantization(calibration.weight_bits)),
        "weight_bits": json.dumps(calibration.weight_bits),
        "calibration": json.dumps(cal),
        "accuracy_gate": json.dumps(gate_record),
    }


def quantize_gated(
    float_model: Path,
    out: Path,
    calibration_inputs: np.ndarray,
    gate_inputs: np.ndarray,
    gate_labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    calibrations: Sequence[Calibration],
    calibration_source: dict[str, Any],
    gate_source: str,
    thresholds: GateThresholds | None = None,
    debug_images: int = 16,
    log: Any = print,
    reference: Path | None = None,
) -> QuantizeResult:
    """Quantise `float_model` with each calibration in turn until one passes the gate on
    `gate_inputs`; write that one to `out` (atomically) with its metadata. If none passes,
    nothing is written and the result names the tensors that hurt most.

    `reference`: the float model the gate compares with and whose metadata the INT8 model
    carries, when `float_model` is not it (a quantisation-aware fine-tuned copy of it,
    imgclf.training.loop.qat); default `float_model`."""
    if not calibrations:
        raise ValueError("no calibration to try")
    float_proto = onnx.load(str(reference or float_model), load_external_data=False)
    float_props = {p.key: p.value for p in float_proto.metadata_props}
    output = json.loads(float_props.get("output", '"logits"'))
    attempts: list[tuple[Calibration, GateReport]] = []
    with tempfile.TemporaryDirectory(prefix="imgclf-int8-") as tmp:
        prepared = preprocess_for_quantization(float_model, Path(tmp) / "prepared.onnx")
        float_probs = run_probabilities(
            prepared if reference is None else reference, gate_inputs, output
        )
        candidate = Path(tmp) / "int8.onnx"
        for cal in calibrations:
            quantize_int8(prepared, calibration_inputs, cal, candidate)
            probs = run_probabilities(candidate, gate_inputs, output)
            report = accuracy_gate(float_probs, probs, gate_labels, class_names, thresholds)
            log(f"int8 ({cal.method}, {len(calibration_inputs)} calibration images): {report}")
            attempts.append((cal, report))
            if report.ok:
                proto = onnx.load(str(candidate))
                del proto.metadata_props[:]
                props = int8_props(float_props, cal, calibration_source, report, gate_source)
                # the float model's entry does not hold for this graph (computed weights)
                props["class_activation_maps"] = json.dumps(
                    activation_head(proto.SerializeToString())
                )
                onnx.helper.set_model_props(proto, props)
                proto.producer_name = "imgclf"
                out.parent.mkdir(parents=True, exist_ok=True)
                staged = out.parent / f".{out.name}.tmp"
                onnx.save(proto, str(staged))
                staged.replace(out)
                return QuantizeResult(out, cal, report, attempts)
        worst = worst_tensors(prepared, candidate, gate_inputs[:debug_images])
        # a fine-tuned copy's weights are on the INT8 grid already: rank the reference's
        sensitive = weight_sensitivity(
            prepared
            if reference is None
            else preprocess_for_quantization(reference, Path(tmp) / "reference.onnx"),
            gate_inputs[:debug_images],
        )
    return QuantizeResult(None, attempts[-1][0], attempts[-1][1], attempts, worst, sensitive)


def describe_worst(worst: Sequence[dict[str, Any]]) -> str:
    """The worst tensors as report lines."""
    return "\n".join(
        f"  {w['node'] or '(the graph input)'} -> {w['tensor']}: loses "
        f"{w['sqnr_lost_db']:.1f} dB of SQNR (float vs int8 after it: "
        f"{w['float_vs_int8_sqnr_db']:.1f} dB)"
        for w in worst
    )
