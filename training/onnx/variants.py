"""ONNX variants of a model, checked and parity-tested before anything is written.

``export_model`` writes the float32 model; ``export_variants`` writes several (float32,
float16, uint8 NHWC with the normalisation baked in) only after every one of them passed:
the exporter (dynamo, or legacy, or dynamo falling back to legacy when asked: never
silently), ``onnx.checker`` (full check), the signature (imgclf.training.onnx.graphs) and
parity against PyTorch (imgclf.training.onnx.parity). The metadata is
``ModelMetadata.to_props()`` plus provenance.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

from imgclf.imaging import resize_and_crop, to_rgb
from imgclf.modelmeta import ModelMetadata
from imgclf.training.data.presets import EvalPreset
from imgclf.training.onnx.graphs import (
    DEFAULT_OPSET,
    FP16,
    FP32,
    LOGITS,
    PROBABILITIES,
    UINT8,
    BakedPreprocessing,
    ExportError,
    Variant,
    WithSoftmax,
    check_signature,
    export_graph,
    graph_opset,
)
from imgclf.training.onnx.heads import activation_head
from imgclf.training.onnx.parity import (
    PARITY_ATOL,
    PARITY_RTOL,
    ParityError,
    check_parity,
)

MODEL_FILE = "model.onnx"
DEFAULT_BATCH_SIZES = (1, 7, 32)


@dataclass(frozen=True)
class ExportOptions:
    exporter: str = "dynamo"
    opset: int | None = None
    """Default: 18 for dynamo, 17 for legacy."""
    fallback_to_legacy: bool = False
    softmax: bool = False
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    atol: float = PARITY_ATOL
    rtol: float = PARITY_RTOL

    def opset_for(self, exporter: str) -> int:
        return self.opset if self.opset is not None else DEFAULT_OPSET[exporter]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: ModelMetadata
    parity: Any
    variant: str = "fp32"
    exporter: str = "dynamo"
    props: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass
class _Built:
    variant: Variant
    proto: onnx.ModelProto
    parity: Any
    exporter: str
    fallback_reason: str = ""
    explains: str = ""
    """What `class_activation_maps` says: the head imgclf.models.cam found, or why none."""


def library_versions() -> dict[str, str]:
    versions = {}
    for dist in ("torch", "torchvision", "timm", "onnx", "onnxscript", "onnxruntime-gpu",
                 "onnxruntime", "imgclf"):  # fmt: skip
        try:
            versions[f"{dist.replace('-', '_')}_version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _build(
    model: nn.Module,
    variant: Variant,
    images: torch.Tensor,
    pixels: np.ndarray | None,
    metadata: ModelMetadata,
    options: ExportOptions,
) -> _Built:
    """Export, check and parity-test one variant (nothing is written). `images` are real
    images through the eval preset, `pixels` the same images resized and cropped (uint8)."""
    model = model.eval().cpu()
    reference_module = (WithSoftmax(model) if options.softmax else model).eval()
    module = reference_module
    if variant is FP16:
        module = copy.deepcopy(reference_module).half()
        example, onnx_inputs = images[:2].half(), images.numpy().astype(np.float16)
    elif variant is UINT8:
        if pixels is None:
            raise ValueError("the uint8 variant needs the images' pixels")
        module = BakedPreprocessing(reference_module, metadata.mean, metadata.std)
        example, onnx_inputs = torch.from_numpy(pixels[:2]), pixels
    else:
        example, onnx_inputs = images[:2], images.numpy()
    output_name = PROBABILITIES if options.softmax else LOGITS

    module.eval()

    def reference(idx: np.ndarray) -> np.ndarray:
        # (the legacy exporter puts the exported module back in the mode it found it in)
        reference_module.eval()
        with torch.no_grad():
            return reference_module(images[torch.from_numpy(idx)]).float().numpy()

    exporters = [options.exporter]
    if options.exporter == "dynamo" and options.fallback_to_legacy:
        exporters.append("legacy")
    failure = ""
    for exporter in exporters:
        opset = options.opset_for(exporter)
        try:
            try:
                raw = export_graph(module, example, opset, exporter, output_name)
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(
                    f"the {exporter} exporter failed: {type(exc).__name__}: {str(exc)[:500]}"
                ) from exc
            proto = onnx.load_from_string(raw)
            onnx.checker.check_model(proto, full_check=True)
            n = len(metadata.labels)
            check_signature(proto, variant, tuple(images.shape[2:]), n, output_name)
            if graph_opset(proto) != opset:
                raise ExportError(f"asked for opset {opset}, the graph has {graph_opset(proto)}")
            session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
            parity = check_parity(
                reference,
                session,
                onnx_inputs,
                options.batch_sizes,
                options.atol,
                options.rtol,
                top1_only=variant is FP16,
            )
            print(f"{variant.name} ({exporter}, opset {opset}): {parity}")
            if not parity.ok:
                raise ParityError(f"ONNX Runtime disagrees with PyTorch: {parity}")
            explains = activation_head(raw)
            print(f"{variant.name}: class activation maps: {explains}")
            return _Built(variant, proto, parity, exporter, failure, explains)
        except (ExportError, onnx.checker.ValidationError) as exc:
            if exporter == exporters[-1]:
                hint = (
                    "; try --legacy-exporter (or --fallback-to-legacy)"
                    if exporter == "dynamo"
                    else ""
                )
                kind = ParityError if isinstance(exc, ParityError) else ExportError
                raise kind(f"{variant.name}: {exc}{hint}") from exc
            failure = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(
                f"WARNING: the dynamo exporter failed for the {variant.name} variant ({failure}); "
                "falling back to the legacy TorchScript exporter (--fallback-to-legacy)"
            )
    raise AssertionError("unreachable")


def _props(
    metadata: ModelMetadata, built: _Built, options: ExportOptions
) -> tuple[ModelMetadata, dict[str, str]]:
    parity = built.parity
    provenance = {
        **metadata.provenance,
        "variant": built.variant.name,
        "input_dtype": {FP32: "float32", FP16: "float16", UINT8: "uint8"}[built.variant],
        "opset": graph_opset(built.proto),
        "exporter": "torch.onnx dynamo"
        if built.exporter == "dynamo"
        else "torch.onnx torchscript (legacy)",
        **({"exporter_fallback": built.fallback_reason} if built.fallback_reason else {}),
        **library_versions(),
        "parity": str(parity),
        "parity_max_abs_diff": parity.max_abs_diff,
        "parity_atol": None if parity.top1_only else options.atol,
        "parity_rtol": None if parity.top1_only else options.rtol,
        "parity_batch_sizes": list(options.batch_sizes),
        "parity_images": parity.num_images,
        "class_activation_maps": built.explains,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    output = PROBABILITIES if options.softmax else "logits"
    metadata = dataclasses.replace(metadata, output=output, provenance=provenance)
    props = metadata.to_props()
    if built.variant is UINT8:
        props["input_layout"] = '"NHWC"'
        props["preprocessing_in_graph"] = (
            '"normalisation (mean/std) in the graph; decode, resize and center crop are not: '
            'send uint8 RGB pixels of input_size, NHWC"'
        )
    return metadata, props


def _write(built: _Built, props: dict[str, str], out_dir: Path) -> Path:
    proto = built.proto
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "imgclf"
    onnx.checker.check_model(proto, full_check=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{MODEL_FILE}.tmp"
    onnx.save(proto, tmp)
    return tmp.replace(out_dir / MODEL_FILE)


def export_variants(
    model: nn.Module,
    metadata: ModelMetadata,
    out_dirs: dict[Variant, Path],
    images: list[Image.Image],
    options: ExportOptions | None = None,
) -> list[ExportResult]:
    """Export `model` as each variant of `out_dirs` into its folder, checked and parity-tested
    on `images` (real images, at least 2); nothing is written unless every variant passed."""
    options = options or ExportOptions()
    if len(images) < 2:
        raise ValueError(f"parity needs at least 2 images, got {len(images)}")
    spec = metadata.preprocessing
    inputs = torch.stack([EvalPreset(spec)(img) for img in images])
    pixels = np.stack([np.asarray(resize_and_crop(to_rgb(img), spec)) for img in images])
    built = [_build(model, v, inputs, pixels, metadata, options) for v in out_dirs]
    results = []
    for b in built:
        meta, props = _props(metadata, b, options)
        path = _write(b, props, out_dirs[b.variant])
        results.append(ExportResult(path, meta, b.parity, b.variant.name, b.exporter, props))
    return results


def export_model(
    model: nn.Module,
    metadata: ModelMetadata,
    out_dir: str | Path,
    sample_inputs: torch.Tensor,
    options: ExportOptions | None = None,
) -> ExportResult:
    """Export `model` (float32 NCHW input) to ``out_dir/model.onnx`` with `metadata`, after
    the checks above. `sample_inputs`: (N >= 2, 3, H, W) real images through the eval preset."""
    options = options or ExportOptions()
    if sample_inputs.ndim != 4 or len(sample_inputs) < 2:
        raise ValueError(f"sample_inputs must be (N>=2, 3, H, W), got {tuple(sample_inputs.shape)}")
    inputs = sample_inputs.detach().cpu().float().contiguous()
    built = _build(model, FP32, inputs, None, metadata, options)
    meta, props = _props(metadata, built, options)
    path = _write(built, props, Path(out_dir))
    return ExportResult(path, meta, built.parity, "fp32", built.exporter, props)
