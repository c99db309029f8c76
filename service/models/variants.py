"""Precision variants of one model version, and which one a server runs.

A version folder holds ``model.onnx`` (float32, or float16 from an export that wrote only
that) and may hold ``model.int8.onnx`` beside it (``imgclf export --precision int8``: static
QDQ quantisation that passed the accuracy gate against the float model). Both files share
the model's metadata, so every other part of the server (preprocessing, labels, batching) is
the same whichever runs; a folder with only ``model.int8.onnx`` is an INT8-only model.

Which variant runs (`choose_variant`): a ``precision`` in the model's config.json forces one;
otherwise INT8 where ONNX Runtime's integer kernels pay, that is on the CPU provider of a CPU
with VNNI dot-product instructions (AVX512-VNNI or AVX-VNNI), or of an x86 CPU with AVX2 when
the INT8 file's weights are 7-bit (``weight_bits`` in its metadata: ``imgclf export
--weight-bits 7``). Without VNNI, ORT's fast U8S8 kernels add pairs of products in 16 bits,
which saturates with 8-bit weights, so the server runs exact U8U8 kernels for those
(imgclf.runtime.options), no faster than float; 7-bit weights fit, and ORT runs its fast
kernels on them exactly. The float model runs elsewhere (CUDA gains nothing from QDQ graphs:
FP16 or TensorRT are the GPU's reduced precisions).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from imgclf.onnxgraph import metadata_props
from imgclf.repolayout import INT8_FILE
from imgclf.repolayout import MODEL_FILE as FLOAT_FILE

VARIANT_FILES = {"float": FLOAT_FILE, "int8": INT8_FILE}
"""Variant name -> file in the version folder, in order of preference when nothing decides."""
PRECISION_CHOICES = ("auto", "float", "int8")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has integer dot-product instructions ONNX Runtime's INT8 kernels use."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in VNNI_FLAGS)


@dataclass(frozen=True)
class Choice:
    path: Path
    variant: str
    """``float`` or ``int8``."""
    reason: str


def available_variants(version_dir: Path) -> dict[str, Path]:
    """Variant name -> file, for the variant files present in `version_dir`."""
    return {v: version_dir / f for v, f in VARIANT_FILES.items() if (version_dir / f).is_file()}


def choose_variant(
    version_dir: Path, forced: str, provider: str, flags: frozenset[str] | None = None
) -> Choice:
    """The file to serve from `version_dir`. `forced`: auto, float or int8 (config.json
    ``precision``); `provider`: the execution provider the model will run on (ORT name).
    FileNotFoundError when the forced variant (or any variant) is missing."""
    present = available_variants(version_dir)
    if not present:
        raise FileNotFoundError(f"no {' or '.join(VARIANT_FILES.values())} in {version_dir}")
    if forced != "auto":
        if forced not in present:
            raise FileNotFoundError(
                f"precision {forced!r} is forced by config.json but {version_dir} has no "
                f"{VARIANT_FILES[forced]}"
            )
        return Choice(present[forced], forced, f"{forced} forced by config.json")
    if len(present) == 1:
        ((variant, path),) = present.items()
        return Choice(path, variant, f"the only variant ({path.name})")
    cpu = provider == "CPUExecutionProvider"
    flags = cpu_flags() if flags is None else flags
    if cpu and has_vnni(flags):
        return Choice(present["int8"], "int8", "CPU with VNNI: INT8 kernels pay")
    if cpu and "avx2" in flags and weight_bits(present["int8"]) <= 7:
        reason = "7-bit INT8 weights: exact at full speed on this CPU without VNNI"
        return Choice(present["int8"], "int8", reason)
    why = "this CPU has no VNNI" if cpu else f"{provider} gains nothing from INT8 QDQ graphs"
    return Choice(present["float"], "float", f"{why}: float model")


def weight_bits(int8_file: Path) -> int:
    """The bits of an INT8 file's weights (its ``weight_bits`` metadata; 8 if it says none)."""
    try:
        return int(json.loads(metadata_props(int8_file).get("weight_bits", "8")))
    except (OSError, ValueError, TypeError, DecodeError):
        return 8  # unreadable here: loading the file says why


def variant_precision(choice: Choice, input_type: str) -> str:
    """The precision served: int8 for the INT8 file, else what the float model takes."""
    if choice.variant == "int8":
        return "int8"
    return "fp16" if input_type == "tensor(float16)" else "fp32"


def describe_gate(provenance: dict) -> str:
    """For the load log line: an INT8 model's calibration and measured accuracies."""
    gate, calibration = provenance.get("accuracy_gate"), provenance.get("calibration")
    if not isinstance(gate, dict) or not isinstance(calibration, dict):
        return ""
    qat = calibration.get("quantization_aware_training")
    qat = qat if isinstance(qat, dict) else None
    text = (
        f"{calibration.get('weight_bits', 8)}-bit weights, "
        + (f"fine-tuned quantisation-aware {qat.get('epochs')} epochs, " if qat else "")
        + f"calibrated {calibration.get('method')} on {calibration.get('images')} images "
        f"(seed {calibration.get('seed')}), gate on {gate.get('images')} images: "
        f"top-1 agreement {gate.get('agreement', float('nan')):.2f} %"
    )
    if gate.get("float_accuracy") is not None:
        text += (
            f", top-1 {gate['float_accuracy']:.2f} % float -> {gate['int8_accuracy']:.2f} % int8"
        )
    return text
