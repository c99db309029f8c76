"""Evaluate an ONNX classifier through ONNX Runtime: ``imgclf evaluate MODEL``.

Torch-free: the images go through ``service.imaging`` exactly as the server preprocesses them,
and the model's labels and preprocessing come from its ONNX metadata (plus a ``config.json``
beside the file, as the server reads it). Prints accuracy, top-5 accuracy and per-class
precision/recall/F1; writes ``metrics.json``, ``confusion_matrix.csv`` and ``.png``.

    imgclf evaluate models/digits --dataset digits
    imgclf evaluate models/flowers/2/model.onnx --data-path data/flowers --split all
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from service.imaging import decode_image, preprocess_image
from service.modelmeta import ModelMetadata
from training.digits import DIGITS_SEED, DIGITS_VAL_FRACTION, digits_split, load_digits_images
from training.folders import find_classes, list_images, stratified_split

MODEL_FILE = "model.onnx"


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
        raise FileNotFoundError(f"no {MODEL_FILE} at {path} or in a numbered version under it")
    return path / str(versions[-1]) / MODEL_FILE


class OnnxClassifier:
    """An ONNX classifier with its metadata, run on PIL images via the serving preprocessing."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        self.path = resolve_model_path(path)
        self.session = ort.InferenceSession(str(self.path), providers=list(providers))
        props = self.session.get_modelmeta().custom_metadata_map
        sidecar = _read_sidecar(self.path.parent / "config.json")
        self.metadata = ModelMetadata.from_props(props, overrides=sidecar)
        self.input_name = self.session.get_inputs()[0].name

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        spec = self.metadata.preprocessing
        return np.stack([preprocess_image(img, spec) for img in images])

    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """(N, classes) probabilities; logits outputs go through a softmax."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = self.preprocess(images[start : start + batch_size])
            chunks.append(self.session.run(None, {self.input_name: batch})[0])
        out = np.concatenate(chunks).astype(np.float64)
        if self.metadata.output == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out

    def topk(self, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
        probs = self.probabilities([image])[0]
        order = np.argsort(-probs)[:k]
        return [(self.labels[i], float(probs[i])) for i in order]


def _read_sidecar(path: Path) -> dict[str, Any]:
    """Metadata overrides from a config.json beside the model (foreign ONNX models), as served."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


@dataclass
class EvalReport:
    num_images: int
    accuracy: float
    top5_accuracy: float
    class_names: list[str]
    """The evaluated classes (rows of the confusion matrix)."""
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: np.ndarray
    """Rows: true class; columns: predicted class, plus '(other)' when the model names others."""
    confusion_columns: list[str] = field(default_factory=list)

    def format(self) -> str:
        width = max(12, *(len(n) for n in self.class_names))
        lines = [
            f"images {self.num_images}  accuracy {self.accuracy:.4f}  "
            f"top-5 accuracy {self.top5_accuracy:.4f}",
            f"{'class':<{width}}  precision  recall     f1  support",
        ]
        for i, name in enumerate(self.class_names):
            lines.append(
                f"{name:<{width}}  {self.precision[i]:9.4f}  {self.recall[i]:6.4f}  "
                f"{self.f1[i]:5.4f}  {self.support[i]:7d}"
            )
        lines.append(
            f"{'macro avg':<{width}}  {np.mean(self.precision):9.4f}  "
            f"{np.mean(self.recall):6.4f}  {np.mean(self.f1):5.4f}  {sum(self.support):7d}"
        )
        return "\n".join(lines)


def evaluate_images(
    classifier: OnnxClassifier,
    images: Sequence[Image.Image],
    labels: np.ndarray,
    class_names: list[str],
    batch_size: int = 32,
) -> EvalReport:
    """Score `images` whose true classes are `class_names[labels]` (matched to model labels)."""
    model_index = {name: i for i, name in enumerate(classifier.labels)}
    unknown = [n for n in class_names if n not in model_index]
    if unknown:
        raise ValueError(f"the model has no label for dataset classes {unknown}")
    truth = np.asarray([model_index[class_names[i]] for i in labels])
    probs = classifier.probabilities(images, batch_size)
    pred = probs.argmax(axis=1)
    k = min(5, probs.shape[1])
    top5 = np.argsort(-probs, axis=1)[:, :k]
    evaluated = sorted(set(truth.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=evaluated, zero_division=0
    )
    column = {m: j for j, m in enumerate(evaluated)}
    other = any(p not in column for p in pred.tolist())
    confusion = np.zeros((len(evaluated), len(evaluated) + int(other)), dtype=np.int64)
    for t, p in zip(truth.tolist(), pred.tolist(), strict=True):
        confusion[column[t], column.get(p, len(evaluated))] += 1
    names = [classifier.labels[m] for m in evaluated]
    return EvalReport(
        num_images=len(truth),
        accuracy=float((pred == truth).mean()),
        top5_accuracy=float((top5 == truth[:, None]).any(axis=1).mean()),
        class_names=names,
        precision=[float(x) for x in precision],
        recall=[float(x) for x in recall],
        f1=[float(x) for x in f1],
        support=[int(x) for x in support],
        confusion=confusion,
        confusion_columns=names + (["(other)"] if other else []),
    )


def load_eval_set(
    dataset: str | None,
    data_path: Path | None,
    split: str = "val",
    val_fraction: float = DIGITS_VAL_FRACTION,
    split_seed: int = DIGITS_SEED,
) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """The images, labels and class names to evaluate on (the same splits training uses)."""
    if dataset == "digits":
        images, labels, class_names = load_digits_images()
        if split == "val":
            _, idx = digits_split(labels, val_fraction, split_seed)
            images, labels = [images[i] for i in idx], labels[idx]
        return images, labels, class_names
    if data_path is None:
        raise ValueError("give --dataset digits or --data-path DIR")
    root = Path(data_path)
    single_tree = not (root / "val").is_dir()
    if not single_tree and split == "val":
        root = root / "val"
    class_names = find_classes(root)
    paths, labels = list_images(root, class_names)
    if single_tree and split == "val":
        _, idx = stratified_split(labels, val_fraction, split_seed)
        paths, labels = [paths[i] for i in idx], labels[idx]
    return [decode_image(p.read_bytes()) for p in paths], labels, class_names


def write_outputs(report: EvalReport, out_dir: Path, plot: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "confusion_matrix.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *report.confusion_columns])
        for name, row in zip(report.class_names, report.confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    metrics = {
        "num_images": report.num_images,
        "accuracy": report.accuracy,
        "top5_accuracy": report.top5_accuracy,
        "per_class": {
            name: {
                "precision": report.precision[i],
                "recall": report.recall[i],
                "f1": report.f1[i],
                "support": report.support[i],
            }
            for i, name in enumerate(report.class_names)
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if plot:
        _plot_confusion(report, out_dir / "confusion_matrix.png")


def _plot_confusion(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = report.confusion.shape
    size = min(12.0, 2.0 + 0.45 * n_cols)
    fig, ax = plt.subplots(figsize=(size, size * n_rows / n_cols + 0.5), dpi=100)
    ax.imshow(report.confusion, cmap="Blues")
    ax.set_xticks(range(n_cols), report.confusion_columns, rotation=90)
    ax.set_yticks(range(n_rows), report.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n_cols <= 30:
        peak = report.confusion.max()
        for (r, c), v in np.ndenumerate(report.confusion):
            if v:
                colour = "white" if v > peak / 2 else "black"
                ax.text(c, r, str(v), ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(f"accuracy {report.accuracy:.4f} on {report.num_images} images")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf evaluate",
        description="Accuracy, per-class report and confusion matrix of an ONNX model.",
        add_help=add_help,
    )
    parser.add_argument("model", type=Path, help="model.onnx, a version folder or a model folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=("digits",), help="a built-in dataset")
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
        "--min-accuracy", type=float, help="exit 1 when the accuracy is below this (for CI)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    classifier = OnnxClassifier(args.model, providers=args.providers)
    images, labels, class_names = load_eval_set(
        args.dataset, args.data_path, args.split, args.val_fraction, args.split_seed
    )
    report = evaluate_images(classifier, images, labels, class_names, args.batch_size)
    print(f"model {classifier.path}")
    print(report.format())
    out_dir = args.output_dir
    if out_dir is None:
        version = classifier.path.parent.name
        out_dir = Path("runs/evaluate") / f"{classifier.path.parent.parent.name}-v{version}"
    write_outputs(report, out_dir, plot=not args.no_plot)
    print(f"wrote {out_dir}/confusion_matrix.csv, metrics.json")
    if args.min_accuracy is not None and report.accuracy < args.min_accuracy:
        print(f"accuracy {report.accuracy:.4f} is below --min-accuracy {args.min_accuracy}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
