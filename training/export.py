"""Export a checkpoint to the model repository: ``imgclf export CHECKPOINT --name NAME``.

``<model-repository>/<name>/<version>/model.onnx`` (the next free version by default) is
written only after every variant asked for passed:
1. the exporter (dynamo by default, opset 18; ``--legacy-exporter`` for TorchScript, opset 17;
   a dynamo failure is an error unless ``--fallback-to-legacy``, which says so loudly and
   records it in the metadata);
2. ``onnx.checker.check_model(full_check=True)`` and the signature: one input, one
   (batch, classes) output, a dynamic batch axis;
3. parity against PyTorch on real validation images at batch sizes 1, 7 and 32
   (imgclf.training.onnx.parity).

Variants: ``--softmax`` bakes the softmax in (metadata ``output: probabilities``); ``--fp16``
also writes ``<name>_fp16`` (float16 weights and input; the server casts float32 batches);
``--bake-preprocessing`` also writes ``<name>_uint8`` (uint8 NHWC input of input_size pixels,
normalisation in the graph: the server resizes and crops, the model normalises).
``--precision int8`` also writes ``model.int8.onnx`` into the same version folder, only if it
passed the accuracy gate against the float model (imgclf.training.onnx.export_int8,
imgclf.training.onnx.quantize);
``--precision fp16`` is ``--fp16``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.helpformat import DefaultsHelpFormatter
from imgclf.modelmeta import ModelMetadata
from imgclf.training.data.builtin import BUILTIN_DATASETS
from imgclf.training.data.datasets import load_image, load_split
from imgclf.training.loop.checkpoint import export_state, load_checkpoint
from imgclf.training.onnx.export_int8 import (
    PRECISIONS,
    add_int8_arguments,
    gate_failure,
    publish,
    quantize_checkpoint_model,
    staging_dir,
)
from imgclf.training.onnx.graphs import EXPORTERS, FP16, FP32, UINT8, ExportError
from imgclf.training.onnx.parity import PARITY_ATOL, PARITY_RTOL, ParityError
from imgclf.training.onnx.variants import (
    DEFAULT_BATCH_SIZES,
    MODEL_FILE,
    ExportOptions,
    ExportResult,
    export_model,
    export_variants,
)
from imgclf.usererror import UserError, run_main

__all__ = [
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "ParityError",
    "export_checkpoint",
    "export_model",
    "main",
]


def next_version(model_dir: Path) -> int:
    """One more than the highest numeric version folder under `model_dir` (1 if none)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def dataset_description(args: dict[str, Any]) -> str:
    name = args.get("dataset")
    split = (
        f"stratified split val_fraction {args.get('val_fraction')} seed {args.get('split_seed')}"
    )
    if name in BUILTIN_DATASETS:
        return f"{BUILTIN_DATASETS[name].description}; {split}"
    return f"image folder {args.get('data_path')}"


def checkpoint_metadata(
    ckpt: dict[str, Any], source: str, val_acc: float, weights_key: str = "model"
) -> ModelMetadata:
    """The ModelMetadata a training checkpoint describes."""
    args = ckpt.get("args", {})
    pre = ckpt["preprocessing"]
    data = ckpt.get("data", {})
    return ModelMetadata(
        labels=list(ckpt["class_names"]),
        input_size=(int(pre["input_size"][0]), int(pre["input_size"][1])),
        resize_size=int(pre["resize_size"]),
        mean=tuple(float(x) for x in pre["mean"]),  # type: ignore[arg-type]
        std=tuple(float(x) for x in pre["std"]),  # type: ignore[arg-type]
        interpolation=str(pre["interpolation"]),
        provenance={
            "architecture": ckpt.get("architecture", args.get("model")),
            "weights": args.get("weights") or "none (trained from scratch)",
            "exported_weights": "EMA" if weights_key == "model_ema" else "model",
            "dataset": dataset_description(args),
            **{f"dataset_{k}": v for k, v in data.items()},
            "val_accuracy": float(val_acc),
            "epochs": int(ckpt["epoch"]),
            "checkpoint": source,
        },
    )


def sample_images(ckpt: dict[str, Any], count: int) -> list[Image.Image]:
    """`count` validation images of the checkpoint's dataset, spread across the split."""
    args = ckpt["args"]
    split = load_split(
        args["dataset"], args.get("data_path"), args["val_fraction"], args["split_seed"]
    )
    picks = np.linspace(0, len(split.val_samples) - 1, num=min(count, len(split.val_samples)))
    return [load_image(split.val_samples[int(i)]) for i in picks]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf export",
        description="Export a training checkpoint to the model repository as ONNX.",
        add_help=add_help,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pth or best.pth of a run")
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing version")
    parser.add_argument("--opset", type=int, help="default: 18 (dynamo), 17 (legacy)")
    parser.add_argument(
        "--legacy-exporter", action="store_true", help="the TorchScript exporter, not dynamo"
    )
    parser.add_argument(
        "--fallback-to-legacy",
        action="store_true",
        help="if the dynamo exporter fails, use the legacy one (said loudly, recorded)",
    )
    parser.add_argument("--softmax", action="store_true", help="output probabilities")
    parser.add_argument("--fp16", action="store_true", help="also write NAME_fp16 (GPU)")
    parser.add_argument(
        "--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
        help="int8: also model.int8.onnx in the version folder, gated; fp16: as --fp16",
    )  # fmt: skip
    parser.add_argument(
        "--bake-preprocessing",
        action="store_true",
        help="also write NAME_uint8: uint8 NHWC input, normalisation in the graph",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        help="export the EMA weights (default: the weights the run validated)",
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES),
        help="parity batch sizes (the largest: the biggest batch it will be served at)",
    )  # fmt: skip
    parser.add_argument(
        "--sample-images", type=Path, nargs="+",
        help="image files for the parity check (default: the run's validation images)",
    )  # fmt: skip
    parser.add_argument("--num-samples", type=int, default=8, help="validation images to use")
    parser.add_argument("--atol", type=float, default=PARITY_ATOL)
    parser.add_argument("--rtol", type=float, default=PARITY_RTOL)
    add_int8_arguments(parser)
    return parser


def export_checkpoint(args: argparse.Namespace) -> list[ExportResult]:
    from imgclf.training.models.architectures import create_model

    ckpt = load_checkpoint(args.checkpoint)
    state, val_acc, key = export_state(ckpt, args.ema)
    metadata = checkpoint_metadata(ckpt, str(args.checkpoint), val_acc, key)
    model = create_model(ckpt["architecture"], len(metadata.labels), **ckpt.get("model_kwargs", {}))
    model.load_state_dict(state)
    if args.sample_images:
        images = [load_image(p) for p in args.sample_images]
    else:
        images = sample_images(ckpt, args.num_samples)
    fp16 = args.fp16 or "fp16" in args.precision
    int8 = "int8" in args.precision
    variants = [FP32] + [FP16] * fp16 + [UINT8] * args.bake_preprocessing
    version = args.version or next_version(args.model_repository / args.name)
    out_dirs = {
        v: args.model_repository / f"{args.name}{v.suffix}" / str(version) for v in variants
    }
    final_dir = out_dirs[FP32]
    if int8 and (final_dir / "model.int8.onnx").exists() and not args.force:
        raise FileExistsError(f"{final_dir / 'model.int8.onnx'} exists (use --force)")
    for out_dir in out_dirs.values():
        if (out_dir / MODEL_FILE).exists() and not args.force:
            raise UserError(
                f"{out_dir / MODEL_FILE} exists", "pass --force to overwrite it, or --version N"
            )
    if int8:  # the float model waits in a hidden folder until its INT8 variant passed
        out_dirs[FP32] = staging_dir(args.model_repository, args.name, version)
    options = ExportOptions(
        exporter=EXPORTERS[1] if args.legacy_exporter else EXPORTERS[0],
        opset=args.opset,
        fallback_to_legacy=args.fallback_to_legacy,
        softmax=args.softmax,
        batch_sizes=tuple(sorted(set(args.batch_sizes))),
        atol=args.atol,
        rtol=args.rtol,
    )
    results = export_variants(model, metadata, out_dirs, images, options)
    if int8:
        float_result = results[0]
        try:
            quantized = quantize_checkpoint_model(
                ckpt, float_result.path, metadata, args, model, options
            )
            if quantized.path is None:
                raise gate_failure(quantized, suggest_qat=not args.qat_epochs)
            publish(out_dirs[FP32], final_dir, args.force)
        finally:
            shutil.rmtree(out_dirs[FP32], ignore_errors=True)
        results[0] = dataclasses.replace(float_result, path=final_dir / MODEL_FILE)
        print(f"wrote {final_dir / 'model.int8.onnx'} (int8: {quantized.gate})")
    for r in results:
        print(f"wrote {r.path} ({r.variant}, {r.exporter})")
    return results


def run(argv: list[str] | None = None) -> int:
    """The command; a failure raises (UserError for a known mistake)."""
    args = get_args_parser().parse_args(argv)
    try:
        export_checkpoint(args)
    except (ExportError, ValueError) as exc:
        raise UserError(
            f"export failed: {exc}", "nothing was written; --debug shows where"
        ) from exc
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command as `imgclf export` runs it: a failure is a line and an exit status."""
    return run_main("imgclf export", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
