"""Train a classifier: ``imgclf train`` (or ``python -m training.train``).

The torchvision classification reference recipe, small: argparse in, a run directory out with
``checkpoint.pth`` (last epoch), ``best.pth`` (best val accuracy), ``history.csv``,
``loss.png``, ``accuracy.png`` and ``args.json``. Checkpoints hold only tensors and primitives,
so they load with ``torch.load(..., weights_only=True)``.

    python -m training.train --dataset digits --model digits_cnn --epochs 30 --output-dir runs/d
    python -m training.train --data-path DIR --model resnet18 --weights DEFAULT -b 32
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from service.imaging import INTERPOLATIONS, Preprocessing
from training.architectures import build_model
from training.data import DATASETS, ImageDataset, format_class_counts, load_split
from training.presets import AUGMENTATIONS, EvalPreset, TrainPreset, default_augmentation
from training.utils import (
    plain,
    plot_history,
    read_history,
    seed_everything,
    write_history,
    write_json,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    epochs: int
    final_val_acc: float
    best_val_acc: float
    best_epoch: int


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf train", description="Train an image classifier.", add_help=add_help
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-path", type=Path, help="image folder (train/ and val/, or one tree)")
    data.add_argument(
        "--dataset",
        choices=DATASETS,
        help="digits (built in) or folder (default: folder if --data-path is given, else digits)",
    )
    data.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of a tree")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")
    data.add_argument("--input-size", type=int, help="crop side (default 32 digits, 224 else)")
    data.add_argument(
        "--resize-size",
        type=int,
        help="shorter side before the center crop "
        "(default: input size for digits, input/0.875 else)",
    )
    data.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), default="bilinear")
    data.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
    data.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
    data.add_argument("--augmentation", choices=AUGMENTATIONS, help="default by dataset")
    data.add_argument("-j", "--workers", type=int, default=2, help="data loading processes")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="digits_cnn",
        help="digits_cnn, a torchvision classifier name, or a timm name (timm:NAME)",
    )
    model.add_argument(
        "--weights",
        help="pretrained weights (torchvision enum name, or "
        "'pretrained' for timm); none by default",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=30)
    optim.add_argument("-b", "--batch-size", type=int, default=64)
    optim.add_argument("--opt", choices=("sgd", "adamw"), default="sgd")
    optim.add_argument("--lr", type=float, default=0.1)
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4)
    optim.add_argument("--lr-scheduler", choices=("cosine", "step"), default="cosine")
    optim.add_argument("--lr-step-size", type=int, default=30, help="step scheduler period")
    optim.add_argument("--lr-gamma", type=float, default=0.1, help="step scheduler factor")
    optim.add_argument("--label-smoothing", type=float, default=0.0)

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", type=Path, default=Path("runs/train"))
    run.add_argument("--resume", type=Path, help="checkpoint to continue from")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on other arguments (dataset, sizes, augmentation)."""
    args = argparse.Namespace(**vars(args))
    if args.dataset is None:
        args.dataset = "folder" if args.data_path else "digits"
    if args.input_size is None:
        args.input_size = 32 if args.dataset == "digits" else 224
    if args.resize_size is None:
        args.resize_size = (
            args.input_size if args.dataset == "digits" else math.floor(args.input_size / 0.875)
        )
    if args.augmentation is None:
        args.augmentation = default_augmentation(args.dataset)
    return args


def preprocessing_from_args(args: argparse.Namespace) -> Preprocessing:
    return Preprocessing(
        input_size=(args.input_size, args.input_size),
        resize_size=args.resize_size,
        interpolation=args.interpolation,
        mean=tuple(args.mean),
        std=tuple(args.std),
    )


def preprocessing_dict(spec: Preprocessing) -> dict[str, Any]:
    return plain(dataclasses.asdict(spec))


def preprocessing_from_dict(values: dict[str, Any]) -> Preprocessing:
    return Preprocessing(
        input_size=tuple(values["input_size"]),
        resize_size=int(values["resize_size"]),
        interpolation=str(values["interpolation"]),
        mean=tuple(values["mean"]),
        std=tuple(values["std"]),
    )


def run_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None,
    desc: str,
    progress: bool = True,
) -> tuple[float, float]:
    """One pass over `loader`; trains when `optimizer` is given. Returns (mean loss, accuracy)."""
    training = optimizer is not None
    model.train(training)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    with torch.set_grad_enabled(training):
        for images, targets in bar:
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            loss = criterion(logits, targets)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            n = targets.shape[0]
            total_loss += loss.item() * n
            correct += int((logits.argmax(1) == targets).sum())
            seen += n
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if args.opt == "sgd":
        return torch.optim.SGD(
            params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    if args.lr_scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    return torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma
    )


def train(args: argparse.Namespace) -> TrainResult:
    """Run the training described by `args` (from get_args_parser) and return its summary."""
    args = resolve_args(args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = seed_everything(args.seed)
    device = torch.device(args.device)
    spec = preprocessing_from_args(args)

    split = load_split(args.dataset, args.data_path, args.val_fraction, args.split_seed)
    print(f"dataset {args.dataset}: {len(split.class_names)} classes\n{format_class_counts(split)}")
    train_ds = ImageDataset(
        split.train_samples, split.train_labels, TrainPreset(spec, args.augmentation)
    )
    val_ds = ImageDataset(split.val_samples, split.val_labels, EvalPreset(spec))
    loader_kw: dict[str, Any] = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "persistent_workers": args.workers > 0,
        "pin_memory": device.type == "cuda",
    }
    train_loader = DataLoader(train_ds, shuffle=True, generator=generator, **loader_kw)
    val_loader = DataLoader(val_ds, shuffle=False, **loader_kw)

    model = build_model(args.model, len(split.class_names), args.weights).to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(args, model)
    scheduler = build_scheduler(args, optimizer)

    start_epoch, best_acc, best_epoch = 0, -1.0, 0
    history: list[dict[str, float]] = []
    if args.resume:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=True)
        if ckpt["class_names"] != split.class_names:
            raise ValueError(f"{args.resume} was trained on other classes: {ckpt['class_names']}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch = int(ckpt["epoch"])
        best_acc, best_epoch = float(ckpt["best_val_acc"]), int(ckpt["best_epoch"])
        history = [r for r in read_history(out / "history.csv") if r["epoch"] <= start_epoch]
        print(f"resumed from {args.resume} after epoch {start_epoch}")
    write_json(out / "args.json", vars(args))

    progress = not args.no_progress
    val_acc = history[-1]["val_acc"] if history else float("nan")
    for epoch in range(start_epoch, args.epochs):
        started = time.monotonic()
        lr = optimizer.param_groups[0]["lr"]
        desc = f"epoch {epoch + 1}/{args.epochs}"
        train_loss, train_acc = run_epoch(
            model, criterion, train_loader, device, optimizer, desc + " train", progress
        )
        scheduler.step()
        val_loss, val_acc = run_epoch(
            model, criterion, val_loader, device, None, desc + " val", progress
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "time_s": round(time.monotonic() - started, 3),
        }
        history.append(row)
        improved = val_acc > best_acc
        if improved:
            best_acc, best_epoch = val_acc, epoch + 1
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch + 1,
            "args": plain(vars(args)),
            "architecture": args.model,
            "class_names": list(split.class_names),
            "preprocessing": preprocessing_dict(spec),
            "val_acc": val_acc,
            "best_val_acc": best_acc,
            "best_epoch": best_epoch,
        }
        _save(checkpoint, out / "checkpoint.pth")
        if improved:
            _save(checkpoint, out / "best.pth")
        write_history(out / "history.csv", history)
        plot_history(history, out)
        print(
            f"{desc}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f} | lr {lr:.4g} | {row['time_s']:.1f}s"
            + (" *" if improved else ""),
            flush=True,
        )
    print(f"best val acc {best_acc:.4f} (epoch {best_epoch}); artefacts in {out}")
    return TrainResult(out, args.epochs, val_acc, best_acc, best_epoch)


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
