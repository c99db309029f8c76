"""Evaluate an exported classifier: ``imgclf evaluate MODEL``.

Through ONNX Runtime (MODEL: a model.onnx, a version folder, or a model folder for its latest
version), or through a running imgclf server (``--server HOST:PORT``, MODEL: the served name).
Torch-free: images go through ``imgclf.imaging`` exactly as the server preprocesses them, and
the labels and preprocessing come from the model's own metadata (plus a ``config.json`` beside
the file, as the server reads it). Prints accuracy, top-5 accuracy and per-class
precision/recall/F1; writes ``metrics.json``, ``confusion_matrix.csv`` and ``.png``, and for an
ONNX model ``confident_mistakes.png``: the most confidently wrong images with the class
activation maps of the predicted and the true class (imgclf.training.gallery; ``--gallery 0``
turns it off).

    imgclf evaluate models/digits --dataset digits
    imgclf evaluate models/flowers/2/model.onnx --data-path data/flowers --split all
    imgclf evaluate flowers --server 127.0.0.1:8001 --data-path data/flowers
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from imgclf.errors import InvalidInput
from imgclf.helpformat import DefaultsHelpFormatter
from imgclf.imaging import decode_image, preprocess_image, resize_and_crop, to_rgb
from imgclf.modelmeta import ModelMetadata
from imgclf.repolayout import CONFIG_FILE, read_json
from imgclf.training.data.builtin import BUILTIN_DATASETS, load_builtin_split
from imgclf.training.data.digits import DIGITS_SEED, DIGITS_VAL_FRACTION
from imgclf.training.data.folders import find_classes, list_images, stratified_split
from imgclf.training.gallery import GALLERY_FILE, write_gallery
from imgclf.training.report import EvalReport, evaluate_images, write_outputs
from imgclf.usererror import UserError, run_main

__all__ = [
    "EvalReport",
    "OnnxClassifier",
    "ServerClassifier",
    "evaluate_images",
    "load_eval_set",
    "main",
]

MODEL_FILE = "model.onnx"
ORT_INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
}


def resolve_model_path(target: str | Path) -> Path:
    """An .onnx file; a version folder holding model.onnx; or a model folder (latest version)."""
    path = Path(target)
    if path.is_file():
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    versions = sorted(
        (int(p.name) for p in path.glob("*") if p.name.isdigit() and (p / MODEL_FILE).is_file()),
    )
    if not versions:
        what = "no such file or folder" if not path.exists() else f"no {MODEL_FILE} in it"
        raise UserError(
            f"{path}: {what} (nor in a numbered version folder under it)",
            "pass a model folder (models/NAME), a version folder (models/NAME/1) or a .onnx file"
            "; `ls models` lists the repository",
        )
    return path / str(versions[-1]) / MODEL_FILE


class OnnxClassifier:
    """An ONNX classifier with its metadata, run on PIL images via the serving preprocessing."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        self.path = resolve_model_path(path)
        self.providers = list(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=list(providers))
        except Exception as exc:  # ONNX Runtime's InvalidProtobuf, Fail, ...
            first = " ".join(str(exc).split())[:160]
            raise UserError(
                f"{self.path} is not an ONNX model ONNX Runtime can load ({first})",
                "pass a model.onnx that `imgclf export` wrote, or its folder",
            ) from exc
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        sidecar = read_json(self.path.parent / CONFIG_FILE)
        # The uint8 variant (export --bake-preprocessing) takes resized, cropped NHWC pixels.
        self.pixel_input = json.loads(props.get("input_layout", '"NCHW"')) == "NHWC"
        props["input_layout"] = '"NCHW"'
        self.metadata = ModelMetadata.from_props(props, overrides=sidecar)
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = ORT_INPUT_TYPES[self.session.get_inputs()[0].type]

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        spec = self.metadata.preprocessing
        if self.pixel_input:
            return np.stack([np.asarray(resize_and_crop(to_rgb(img), spec)) for img in images])
        return np.stack([preprocess_image(img, spec) for img in images]).astype(self.input_type)

    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """(N, classes) probabilities; logits outputs go through a softmax."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = self.preprocess(images[start : start + batch_size])
            chunks.append(self.session.run(None, {self.input_name: batch})[0].astype(np.float64))
        out = np.concatenate(chunks).astype(np.float64)
        if self.metadata.output == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out

    def topk(self, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
        probs = self.probabilities([image])[0]
        order = np.argsort(-probs)[:k]
        return [(self.labels[i], float(probs[i])) for i in order]


class ServerClassifier:
    """A model served by a running imgclf server, through imgclf.client (images sent as PNG,
    which is lossless, so the server sees exactly the pixels evaluated here)."""

    def __init__(self, target: str, model: str = "", timeout: float = 60.0) -> None:
        from imgclf.client import Client

        self.client = Client(target, timeout=timeout)
        served = {m.name: m for m in self.client.list_models().models}
        if model and model not in served:
            raise UserError(
                f"{target} serves no model {model!r}", f"it serves {', '.join(sorted(served))}"
            )
        if not model:
            if len(served) != 1:
                raise UserError(
                    f"{target} serves {len(served)} models: name the one to evaluate",
                    f"it serves {', '.join(sorted(served))}",
                )
            model = next(iter(served))
        self.model = model
        self._labels = list(served[model].labels)
        self.path = Path(f"{target}/{model}")

    @property
    def labels(self) -> list[str]:
        return self._labels

    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        rows = []
        for start in range(0, len(images), batch_size):
            pngs = []
            for img in images[start : start + batch_size]:
                buffer = io.BytesIO()
                to_rgb(img).save(buffer, format="PNG")
                pngs.append(buffer.getvalue())
            reply = self.client.classify(pngs, model=self.model, top_k=1)
            rows += [list(r.probabilities) for r in reply.results]
        return np.asarray(rows, dtype=np.float64)

    def close(self) -> None:
        self.client.close()


def _decode_all(paths: list[Path], labels: np.ndarray) -> tuple[list[Image.Image], np.ndarray]:
    """Decode every file the way the server does; unreadable ones are reported and skipped."""
    images, keep = [], []
    for i, path in enumerate(paths):
        try:
            images.append(decode_image(path.read_bytes()))
            keep.append(i)
        except (InvalidInput, OSError) as exc:
            print(f"warning: skipping unreadable image {path}: {exc}", file=sys.stderr)
    return images, labels[keep]


def load_eval_set(
    dataset: str | None,
    data_path: Path | None,
    split: str = "val",
    val_fraction: float = DIGITS_VAL_FRACTION,
    split_seed: int = DIGITS_SEED,
) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """The images, labels and class names to evaluate on (the same splits training uses)."""
    if dataset is not None and dataset != "folder":
        return load_builtin_split(dataset, split, val_fraction, split_seed)
    if data_path is None:
        raise ValueError("give --dataset NAME or --data-path DIR")
    root = Path(data_path)
    single_tree = not (root / "val").is_dir()
    if not single_tree and split == "val":
        root = root / "val"
    class_names = find_classes(root)
    paths, labels = list_images(root, class_names)
    if single_tree and split == "val":
        _, idx = stratified_split(labels, val_fraction, split_seed)
        paths, labels = [paths[i] for i in idx], labels[idx]
    images, labels = _decode_all(paths, labels)
    return images, labels, class_names


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf evaluate",
        description="Accuracy, per-class report and confusion matrix of an ONNX model.",
        add_help=add_help,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "model",
        help="model.onnx, a version folder or a model folder; with --server, the served name",
    )
    parser.add_argument("--server", metavar="HOST:PORT", help="evaluate through a running server")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=tuple(BUILTIN_DATASETS), help="a built-in dataset")
    source.add_argument("--data-path", type=Path, help="image folder (val/ inside, or one tree)")
    parser.add_argument(
        "--split", choices=("val", "all"), default="val", help="held-out split or every image"
    )
    parser.add_argument("--val-fraction", type=float, default=DIGITS_VAL_FRACTION)
    parser.add_argument("--split-seed", type=int, default=DIGITS_SEED)
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"])
    parser.add_argument("--output-dir", type=Path, help="default: runs/evaluate/<name>-v<version>")
    parser.add_argument("--no-plot", action="store_true", help="skip confusion_matrix.png")
    parser.add_argument(
        "--gallery", type=int, default=8, metavar="N",
        help=f"{GALLERY_FILE}: the N most confidently wrong images with the maps of the "
        "predicted and the true class (0: none; ONNX models with a pooling + linear head)",
    )  # fmt: skip
    parser.add_argument(
        "--min-accuracy", type=float, help="exit 1 when the accuracy is below this (for CI)"
    )
    return parser


def gallery_note(
    args: argparse.Namespace, classifier: Any, images: list[Image.Image], report: EvalReport,
    out_dir: Path,
) -> str:  # fmt: skip
    """Write the gallery of confident mistakes when the model file is here; the line to print."""
    if not isinstance(classifier, OnnxClassifier):
        return "no gallery of mistakes through --server: evaluate the model file for it"
    assert report.probabilities is not None and report.truth is not None
    return write_gallery(
        classifier, images, report.probabilities, report.truth, out_dir / GALLERY_FILE,
        args.gallery,
    )  # fmt: skip


def run(argv: list[str] | None = None) -> int:
    """The command; a failure raises (UserError for a known mistake)."""
    args = get_args_parser().parse_args(argv)
    if args.server:
        classifier: Any = ServerClassifier(args.server, args.model)
        default_out = Path("runs/evaluate") / f"{classifier.model}-server"
    else:
        classifier = OnnxClassifier(args.model, providers=args.providers)
        version = classifier.path.parent.name
        default_out = Path("runs/evaluate") / f"{classifier.path.parent.parent.name}-v{version}"
    images, labels, class_names = load_eval_set(
        args.dataset, args.data_path, args.split, args.val_fraction, args.split_seed
    )
    report = evaluate_images(classifier, images, labels, class_names, args.batch_size)
    print(f"model {classifier.path}")
    print(report.format())
    out_dir = args.output_dir or default_out
    write_outputs(report, out_dir, plot=not args.no_plot)
    print(
        f"wrote {out_dir}/metrics.json, confusion_matrix.csv" + ("" if args.no_plot else ", .png")
    )
    if args.gallery > 0:
        print(gallery_note(args, classifier, images, report, out_dir))
    if args.min_accuracy is not None and report.accuracy < args.min_accuracy:
        print(f"accuracy {report.accuracy:.4f} is below --min-accuracy {args.min_accuracy}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command as `imgclf evaluate` runs it: a failure is a line and an exit status."""
    return run_main("imgclf evaluate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
