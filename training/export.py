"""Export a classifier to ONNX for the server: ``imgclf export CHECKPOINT --name NAME``.

The file lands at ``<model-repository>/<name>/<version>/model.onnx`` only after it passed:

1. ``onnx.checker.check_model(full_check=True)``;
2. a dynamic batch axis on ``input`` (NCHW float32) and ``logits``;
3. PARITY: ONNX Runtime (CPUExecutionProvider) against PyTorch eval on real preprocessed images,
   at batch size 1 and at the full sample batch; every logit within
   ``|ort - torch| <= atol + rtol * |torch|`` (defaults PARITY_ATOL, PARITY_RTOL) and the same
   top-1 class for every image. Anything else raises ParityError and nothing is written.

The metadata contract (labels, preprocessing, provenance) is ``ModelMetadata.to_props()``.
The legacy TorchScript exporter is the default (it honours opset 17 and takes ~1 s); the
torch.export-based one (``--dynamo``) works too but emits opset >= 18 and takes ~10x longer.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

from service.modelmeta import ModelMetadata
from training.architectures import build_model
from training.data import load_image, load_split
from training.presets import EvalPreset

PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3
DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODEL_FILE = "model.onnx"


class ExportError(RuntimeError):
    """The exported graph is not what the server expects."""


class ParityError(ExportError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    batch_sizes: tuple[int, ...]
    num_images: int
    max_abs_diff: float
    worst_excess: float
    """max over logits of |ort - torch| - (atol + rtol * |torch|); <= 0 passes."""
    top1_mismatches: int
    atol: float
    rtol: float

    @property
    def ok(self) -> bool:
        return self.worst_excess <= 0.0 and self.top1_mismatches == 0

    def __str__(self) -> str:
        return (
            f"parity on {self.num_images} images at batch sizes {list(self.batch_sizes)}: "
            f"max |diff| {self.max_abs_diff:.3g} (atol {self.atol:g}, rtol {self.rtol:g}), "
            f"top-1 mismatches {self.top1_mismatches}"
        )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: ModelMetadata
    parity: ParityReport


def run_onnx(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    """Logits for one NCHW float32 batch through ONNX Runtime."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def check_parity(
    model: nn.Module,
    session: ort.InferenceSession,
    inputs: torch.Tensor,
    batch_sizes: Sequence[int],
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch eval on `inputs` chunked at each batch size."""
    model.eval()
    max_diff, worst, mismatches = 0.0, -np.inf, 0
    for bs in batch_sizes:
        for start in range(0, len(inputs), bs):
            chunk = inputs[start : start + bs]
            with torch.no_grad():
                expected = model(chunk).numpy()
            got = run_onnx(session, chunk.numpy())
            if got.shape != expected.shape:
                raise ParityError(f"ONNX output {got.shape} vs PyTorch {expected.shape}")
            diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            max_diff = max(max_diff, float(diff.max()))
            worst = max(worst, float((diff - (atol + rtol * np.abs(expected))).max()))
            mismatches += int((got.argmax(1) != expected.argmax(1)).sum())
    return ParityReport(
        tuple(batch_sizes), len(inputs), max_diff, worst, mismatches, float(atol), float(rtol)
    )


def _export_graph(model: nn.Module, example: torch.Tensor, opset: int, dynamo: bool) -> bytes:
    buffer = io.BytesIO()
    if dynamo:
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
        )
    else:
        with warnings.catch_warnings():
            # torch >= 2.9 flags the TorchScript exporter as legacy; it is the one we choose.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(
                model,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    return buffer.getvalue()


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _check_signature(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """One float32 NCHW input and one (batch, classes) output, both with a dynamic batch."""
    weights = {x.name for x in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    names = ([i.name for i in inputs], [o.name for o in proto.graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"graph inputs/outputs are {names}, want {INPUT_NAME}/{OUTPUT_NAME}")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError("input must be float32")
    dims = _dims(inputs[0])
    expected = [3, *metadata.input_size]
    if len(dims) != 4 or not isinstance(dims[0], str) or dims[1:] != expected:
        raise ExportError(f"input shape {dims}, want [batch, {expected}] with a dynamic batch")
    out_dims = _dims(proto.graph.output[0])
    if len(out_dims) != 2 or not isinstance(out_dims[0], str):
        raise ExportError(f"output shape {out_dims}, want [batch, classes]")
    if out_dims[1] != len(metadata.labels):
        raise ExportError(f"{out_dims[1]} outputs but {len(metadata.labels)} labels")


def export_model(
    model: nn.Module,
    metadata: ModelMetadata,
    out_dir: str | Path,
    sample_inputs: torch.Tensor,
    opset: int = DEFAULT_OPSET,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
    dynamo: bool = False,
) -> ExportResult:
    """Export `model` to ``out_dir/model.onnx`` with `metadata`, after the checks above.

    `sample_inputs` are real images through the eval preset, an (N, 3, H, W) float32 tensor
    with N >= 2: parity runs at batch size 1 and N.
    """
    if sample_inputs.ndim != 4 or len(sample_inputs) < 2:
        raise ValueError(f"sample_inputs must be (N>=2, 3, H, W), got {tuple(sample_inputs.shape)}")
    if metadata.output != "logits":
        raise ValueError("export_model writes logits; metadata.output must be 'logits'")
    if dynamo and opset < DYNAMO_MIN_OPSET:
        print(f"the dynamo exporter emits opset >= {DYNAMO_MIN_OPSET}; using {DYNAMO_MIN_OPSET}")
        opset = DYNAMO_MIN_OPSET
    model = model.eval().cpu()
    inputs = sample_inputs.detach().cpu().float().contiguous()

    proto = onnx.load_from_string(_export_graph(model, inputs[:2], opset, dynamo))
    onnx.checker.check_model(proto, full_check=True)
    _check_signature(proto, metadata)

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    parity = check_parity(model, session, inputs, (1, len(inputs)), atol, rtol)
    print(parity)
    if not parity.ok:
        raise ParityError(f"ONNX Runtime disagrees with PyTorch: {parity}")

    actual_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    provenance = {
        **metadata.provenance,
        "opset": actual_opset,
        "exporter": "torch.onnx dynamo" if dynamo else "torch.onnx torchscript (legacy)",
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "parity_max_abs_diff": parity.max_abs_diff,
        "parity_atol": atol,
        "parity_rtol": rtol,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    metadata = dataclasses.replace(metadata, provenance=provenance)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata.to_props())
    proto.producer_name = "imgclf"
    onnx.checker.check_model(proto, full_check=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MODEL_FILE}.tmp"
    onnx.save(proto, tmp)
    path = tmp.replace(out / MODEL_FILE)
    return ExportResult(path, metadata, parity)


def next_version(model_dir: Path) -> int:
    """One more than the highest numeric version folder under `model_dir` (1 if none)."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def checkpoint_metadata(ckpt: dict[str, Any], source: str) -> ModelMetadata:
    """The ModelMetadata a training checkpoint describes."""
    from training.train import preprocessing_from_dict

    args = ckpt.get("args", {})
    spec = preprocessing_from_dict(ckpt["preprocessing"])
    if args.get("dataset") == "digits":
        dataset = (
            f"sklearn load_digits, stratified split val_fraction {args.get('val_fraction')} "
            f"seed {args.get('split_seed')}"
        )
    else:
        dataset = f"image folder {args.get('data_path')}"
    return ModelMetadata(
        labels=list(ckpt["class_names"]),
        input_size=spec.input_size,
        resize_size=spec.resize_size,
        mean=spec.mean,
        std=spec.std,
        interpolation=spec.interpolation,
        provenance={
            "architecture": ckpt.get("architecture", args.get("model")),
            "weights": args.get("weights") or "none (trained from scratch)",
            "dataset": dataset,
            "val_accuracy": float(ckpt["val_acc"]),
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
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pth or best.pth of a run")
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing version")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--dynamo", action="store_true", help="use the torch.export exporter")
    parser.add_argument(
        "--sample-images",
        type=Path,
        nargs="+",
        help="image files for the parity check (default: the run's validation images)",
    )
    parser.add_argument("--num-samples", type=int, default=8, help="validation images to use")
    parser.add_argument("--atol", type=float, default=PARITY_ATOL)
    parser.add_argument("--rtol", type=float, default=PARITY_RTOL)
    return parser


def export_checkpoint(args: argparse.Namespace) -> ExportResult:
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    metadata = checkpoint_metadata(ckpt, str(args.checkpoint))
    model = build_model(ckpt["architecture"], len(metadata.labels))
    model.load_state_dict(ckpt["model"])
    if args.sample_images:
        images = [load_image(p) for p in args.sample_images]
    else:
        images = sample_images(ckpt, args.num_samples)
    preset = EvalPreset(metadata.preprocessing)
    inputs = torch.stack([preset(img) for img in images])
    model_dir = args.model_repository / args.name
    version = args.version if args.version is not None else next_version(model_dir)
    out_dir = model_dir / str(version)
    if (out_dir / MODEL_FILE).exists() and not args.force:
        raise FileExistsError(f"{out_dir / MODEL_FILE} exists (use --force or another --version)")
    result = export_model(
        model, metadata, out_dir, inputs, args.opset, args.atol, args.rtol, args.dynamo
    )
    print(f"wrote {result.path}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        export_checkpoint(args)
    except (ExportError, FileExistsError) as exc:
        print(f"export failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
