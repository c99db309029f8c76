"""``imgclf export --precision int8``: an INT8 variant beside the float model, gated.

The float model is exported (and parity-tested) into a hidden staging folder of the model
repository; its INT8 variant is calibrated on a class-stratified sample of the run's training
split and gated against it on the validation split (imgclf.training.onnx.quantize). Only if the gate
passes do both files move into the version folder (``model.onnx``, ``model.int8.onnx``): a
model that failed is never written, and the report names the tensors that hurt most.

``--qat-epochs N`` first fine-tunes a copy of the model under simulated 8-bit arithmetic
(imgclf.training.loop.qat) and quantises that copy; the gate still compares the INT8 model
with the float model that ships beside it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.imaging import preprocess_image
from imgclf.modelmeta import ModelMetadata
from imgclf.repolayout import INT8_FILE, MODEL_FILE
from imgclf.training.data.datasets import SplitData, load_image, load_split
from imgclf.training.data.folders import stratified_sample
from imgclf.training.loop.qat import DEFAULT_QAT_LR
from imgclf.training.onnx.accuracy_gate import (
    MAX_CLASS_RECALL_DROP,
    MAX_TOP1_DROP,
    MIN_AGREEMENT,
    GateThresholds,
)
from imgclf.training.onnx.parity import ExportError
from imgclf.training.onnx.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_PERCENTILE,
    WEIGHT_BITS,
    Calibration,
    QuantizeResult,
    describe_worst,
    quantize_gated,
)
from imgclf.training.onnx.sensitivity import describe_sensitive

if TYPE_CHECKING:
    from torch import nn

    from imgclf.training.onnx.variants import ExportOptions

PRECISIONS = ("fp32", "fp16", "int8")
Finetune = Callable[[SplitData, np.ndarray, Path], tuple[Path, dict[str, Any]]]
"""(split, calibration inputs, scratch folder) -> (a fine-tuned float ONNX model, its record)."""


class GateError(ExportError):
    """The INT8 variant failed the accuracy gate; nothing was written."""


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("INT8 (--precision int8)")
    group.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
        help="training images to calibrate on, class-stratified",
    )  # fmt: skip
    group.add_argument("--calibration-seed", type=int, default=0, help="seed of that sample")
    group.add_argument(
        "--calibration-method", nargs="+", choices=CALIBRATION_METHODS,
        default=[DEFAULT_CALIBRATION_METHOD],
        help="tried in order until one passes the gate",
    )  # fmt: skip
    group.add_argument("--calibration-percentile", type=float, default=DEFAULT_PERCENTILE)
    group.add_argument(
        "--weight-bits", type=int, choices=WEIGHT_BITS, default=8,
        help="7: weights in [-64, 64], which x86 CPUs without VNNI multiply exactly at full "
        "speed (the server then serves INT8 there too)",
    )  # fmt: skip
    group.add_argument(
        "--keep-float", nargs="+", default=[], metavar="NODE",
        help="node names left in float (the gate's report names candidates)",
    )  # fmt: skip
    group.add_argument(
        "--gate-images", type=int, default=0,
        help="validation images the gate measures on, class-stratified (0: all)",
    )  # fmt: skip
    group.add_argument(
        "--qat-epochs", type=non_negative_int, default=0,
        help="epochs of quantisation-aware fine-tuning (distilled from the float model, on the "
        "CPU) before calibration; it simulates MinMax ranges; 0: none",
    )  # fmt: skip
    group.add_argument("--qat-lr", type=positive_float, default=DEFAULT_QAT_LR,
                       help="its AdamW learning rate")  # fmt: skip
    group.add_argument("--gate-max-top1-drop", type=float, default=MAX_TOP1_DROP,
                       help="points of top-1 accuracy INT8 may lose")  # fmt: skip
    group.add_argument("--gate-min-agreement", type=float, default=MIN_AGREEMENT,
                       help="percent of images with the float model's top-1")  # fmt: skip
    group.add_argument("--gate-max-class-recall-drop", type=float, default=MAX_CLASS_RECALL_DROP,
                       help="points of recall any class may lose")  # fmt: skip


def calibrations(args: argparse.Namespace) -> list[Calibration]:
    return [
        Calibration(m, args.calibration_percentile, tuple(args.keep_float), args.weight_bits)
        for m in args.calibration_method
    ]


def thresholds(args: argparse.Namespace) -> GateThresholds:
    return GateThresholds(
        args.gate_max_top1_drop, args.gate_min_agreement, args.gate_max_class_recall_drop
    )


def preprocess(samples: list[Any], metadata: ModelMetadata) -> np.ndarray:
    """Images through the server's preprocessing (imgclf.imaging, the eval preset)."""
    spec = metadata.preprocessing
    return np.stack([preprocess_image(load_image(s), spec) for s in samples])


def staging_dir(model_repository: Path, name: str, version: int) -> Path:
    """A hidden folder of the repository (the server skips hidden folders)."""
    return model_repository / f".staging-{name}-{version}"


def quantize_checkpoint_model(
    ckpt: dict[str, Any],
    float_model: Path,
    metadata: ModelMetadata,
    args: argparse.Namespace,
    model: nn.Module | None = None,
    export_options: ExportOptions | None = None,
) -> QuantizeResult:
    """Calibrate the INT8 variant of `float_model` on the checkpoint's training split and gate
    it on its validation split; writes ``model.int8.onnx`` beside it only if it passed.
    With ``args.qat_epochs``, `model` (the checkpoint's float model, `float_model`'s source)
    is fine-tuned under simulated 8-bit arithmetic first."""
    run = ckpt["args"]
    finetune: Finetune | None = None
    if args.qat_epochs:
        if model is None:
            raise ValueError("quantisation-aware training needs the checkpoint's model")
        qat_source = model

        def fine_tuned(split: SplitData, cal: np.ndarray, scratch: Path) -> tuple[Path, dict]:
            return qat_model(qat_source, run, metadata, args, export_options, split, cal, scratch)

        finetune = fine_tuned
    return quantize_on_split(
        float_model, metadata, args, run["dataset"], run.get("data_path"),
        run["val_fraction"], run["split_seed"], finetune,
    )  # fmt: skip


def qat_model(
    model: nn.Module,
    run: dict[str, Any],
    metadata: ModelMetadata,
    args: argparse.Namespace,
    export_options: ExportOptions | None,
    split: SplitData,
    calibration_inputs: np.ndarray,
    scratch: Path,
) -> tuple[Path, dict[str, Any]]:
    """`model` fine-tuned quantisation-aware on the training split (the run's augmentation and
    batch size), exported (parity-checked) to ``scratch/model.onnx``; with its record."""
    import torch
    from torch.utils.data import DataLoader

    from imgclf.training.data.datasets import ImageDataset
    from imgclf.training.data.presets import TrainPreset, default_augmentation
    from imgclf.training.loop.qat import QatOptions, finetune_quantized
    from imgclf.training.onnx.variants import export_model

    augmentation = run.get("augmentation") or default_augmentation(run["dataset"])
    dataset = ImageDataset(
        split.train_samples, split.train_labels, TrainPreset(metadata.preprocessing, augmentation)
    )
    workers = min(2, int(run.get("workers") or 0))
    loader = DataLoader(
        dataset,
        batch_size=int(run.get("batch_size") or 32),
        shuffle=True,
        generator=torch.Generator().manual_seed(args.calibration_seed),
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    options = QatOptions(args.qat_epochs, args.qat_lr, args.calibration_seed, args.weight_bits)
    inputs = torch.from_numpy(calibration_inputs)
    result = finetune_quantized(model, loader, inputs, options)
    exported = export_model(result.model, metadata, scratch, inputs[:8], export_options)
    return exported.path, {**result.record(), "images": len(dataset)}


def quantize_on_split(
    float_model: Path,
    metadata: ModelMetadata,
    args: argparse.Namespace,
    dataset: str,
    data_path: str | None,
    val_fraction: float,
    split_seed: int,
    finetune: Finetune | None = None,
) -> QuantizeResult:
    """`float_model`'s INT8 variant, calibrated on a class-stratified sample of the dataset's
    training split and gated on its validation split (`args`: the options of
    add_int8_arguments); ``model.int8.onnx`` is written beside it only if it passed.
    `finetune`: what is quantised instead of `float_model` (gated against `float_model`)."""
    split = load_split(dataset, data_path, val_fraction, split_seed)
    if split.shards is not None:
        raise ValueError(
            "INT8 calibration reads the run's images one by one, which tar shards do not offer: "
            "export a run trained on an image folder or a built-in dataset"
        )
    cal_idx = stratified_sample(split.train_labels, args.calibration_images, args.calibration_seed)
    gate_idx = np.arange(len(split.val_labels))
    if args.gate_images:
        gate_idx = stratified_sample(split.val_labels, args.gate_images, args.calibration_seed)
    calibration_inputs = preprocess([split.train_samples[i] for i in cal_idx], metadata)
    gate_inputs = preprocess([split.val_samples[i] for i in gate_idx], metadata)
    source: dict[str, Any] = {
        "images": len(cal_idx),
        "seed": args.calibration_seed,
        "from": "training split, class-stratified (disjoint from the validation split)",
    }
    with tempfile.TemporaryDirectory(prefix="imgclf-qat-") as scratch:
        quantized, reference = float_model, None
        if finetune is not None:
            quantized, source["quantization_aware_training"] = finetune(
                split, calibration_inputs, Path(scratch)
            )
            reference = float_model
        return quantize_gated(
            quantized,
            float_model.parent / INT8_FILE,
            calibration_inputs,
            gate_inputs,
            split.val_labels[gate_idx],
            split.class_names,
            calibrations(args),
            source,
            f"validation split ({len(gate_idx)} images)",
            thresholds(args),
            reference=reference,
        )


def int8_defaults(**overrides: Any) -> argparse.Namespace:
    """The INT8 options at their defaults (as ``imgclf export`` parses them), with overrides."""
    parser = argparse.ArgumentParser()
    add_int8_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def publish(staging: Path, out_dir: Path, force: bool) -> list[Path]:
    """Move the staged files into the version folder (replacing them only with `force`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    moved = []
    for name in (MODEL_FILE, INT8_FILE):
        target = out_dir / name
        if target.exists() and not force:
            raise FileExistsError(f"{target} exists (use --force or another --version)")
    for name in (MODEL_FILE, INT8_FILE):
        if (staging / name).exists():
            moved.append((staging / name).replace(out_dir / name))
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def gate_failure(result: QuantizeResult, suggest_qat: bool = False) -> GateError:
    """The error of a gate that refused every attempt; `suggest_qat`: name --qat-epochs
    (an export from a checkpoint that did not fine-tune)."""
    tried = "; ".join(f"{c.method}: {r}" for c, r in result.attempts)
    qat = (
        "Fine-tuning quantisation-aware often passes where calibration alone cannot: "
        "--qat-epochs N (docs/training.md).\n"
        if suggest_qat
        else ""
    )
    return GateError(
        f"the INT8 variant failed the accuracy gate, nothing written ({tried}).\n"
        f"{qat}"
        f"Tensors whose quantisation hurt most (keep their nodes in float with --keep-float, "
        f"or try --calibration-method {' '.join(CALIBRATION_METHODS)}):\n"
        f"{describe_worst(result.worst)}\n"
        f"Layers whose INT8 weights alone cost the output most (each rounded alone, the rest "
        f"float):\n{describe_sensitive(result.sensitive)}"
    )
