"""Models by name: our small digits CNN, any torchvision classifier, any timm model.

- ``digits_cnn`` (``digits_cnn_w8`` etc. picks the width): our CNN;
- a torchvision classification model (``resnet18``, ``googlenet``, ``inception_v3``, ...);
- ``timm:NAME``, or any name torchvision does not know that timm does.

``create_model`` makes a randomly initialised model (imgclf.training.models.weights builds
one with weights on top of it). ``model_defaults`` gives the input size and normalisation a
model family expects, read from the library's own metadata (no download).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

DIGITS_CNN = "digits_cnn"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Constructor arguments that pretrained torchvision weights change (googlenet, inception_v3);
# a checkpoint records them so the model is rebuilt the way it was trained.
REBUILD_ATTRIBUTES = ("transform_input", "aux_logits")
# Inception v3's auxiliary head needs a 17x17 feature map in training: an input of 299 or more.
AUX_HEAD_MIN_INPUT = {"inception_v3": 299}


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Sequential):
    """Conv-BN-ReLU blocks, two 2x poolings, global average pooling and a linear head.

    About 0.14 M parameters at the default width 32; made for 32x32 inputs (any size >= 4).
    Layer names are "0" to "10"; the head is "10" (``--freeze-until 6`` keeps the convs).
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2) -> None:
        w = width
        super().__init__(
            conv_bn_relu(3, w),
            conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            conv_bn_relu(w, 2 * w),
            conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * w, num_classes),
        )


def is_digits_cnn(name: str) -> bool:
    return name == DIGITS_CNN or name.startswith(DIGITS_CNN + "_w")


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """Every torchvision image classification model name."""
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def model_family(name: str) -> str:
    """``digits_cnn``, ``torchvision`` or ``timm`` (an unknown name is an error)."""
    if is_digits_cnn(name):
        return "digits_cnn"
    if not name.startswith("timm:") and name in torchvision_names():
        return "torchvision"
    import timm

    if timm.is_model(timm_name(name)):
        return "timm"
    raise ValueError(
        f"unknown model {name!r}: not digits_cnn, a torchvision classifier or a timm model "
        "(list them with `imgclf models`)"
    )


def timm_name(name: str) -> str:
    return name.removeprefix("timm:")


@dataclass(frozen=True)
class ModelDefaults:
    """The input a model family was designed for: the eval preset of its reference weights."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    min_input_size: int = 1


def model_defaults(name: str) -> ModelDefaults:
    """Input size, resize, interpolation and normalisation of a model's reference weights."""
    family = model_family(name)
    if family == "digits_cnn":
        return ModelDefaults(32, 32, "bilinear", IMAGENET_MEAN, IMAGENET_STD, min_input_size=4)
    if family == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        tf = weights.transforms()
        min_size = weights.meta.get("min_size", (1, 1))
        return ModelDefaults(
            input_size=int(tf.crop_size[0]),
            resize_size=int(tf.resize_size[0]),
            interpolation=tf.interpolation.value,
            mean=tuple(float(x) for x in tf.mean),  # type: ignore[arg-type]
            std=tuple(float(x) for x in tf.std),  # type: ignore[arg-type]
            min_input_size=int(max(min_size)),
        )
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name(name))
    if cfg is None:
        return ModelDefaults(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    size = int(cfg.input_size[-1])
    return ModelDefaults(
        input_size=size,
        resize_size=math.floor(size / cfg.crop_pct),
        interpolation=cfg.interpolation
        if cfg.interpolation in ("bilinear", "bicubic")
        else "bicubic",
        mean=tuple(float(x) for x in cfg.mean),  # type: ignore[arg-type]
        std=tuple(float(x) for x in cfg.std),  # type: ignore[arg-type]
    )


def size_kwargs(name: str, input_size: int) -> dict[str, Any]:
    """Constructor arguments an input size calls for: no aux head where it cannot train."""
    if input_size < AUX_HEAD_MIN_INPUT.get(name, 0):
        return {"aux_logits": False}
    return {}


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A randomly initialised classifier with `num_classes` outputs (and aux heads, if any)."""
    family = model_family(name)
    if family == "digits_cnn":
        width = int(name.removeprefix(DIGITS_CNN + "_w")) if name != DIGITS_CNN else 32
        return DigitsCNN(num_classes, width=width, **kwargs)
    if family == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    import timm

    return timm.create_model(timm_name(name), pretrained=False, num_classes=num_classes, **kwargs)


def rebuild_kwargs(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments that `create_model` needs to rebuild `model` exactly."""
    return {
        attr: value
        for attr in REBUILD_ATTRIBUTES
        if isinstance(value := getattr(model, attr, None), bool)
    }


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (torchvision's meta; no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
