"""Transfer learning: find and replace classification heads, freeze the backbone, and give
the head its own learning rate.

Heads are found generically: timm models name theirs (``get_classifier``); torchvision
families keep theirs under ``fc`` (ResNet, RegNet, ShuffleNet, GoogLeNet, Inception),
``classifier`` / ``classifier[-1]`` (AlexNet, VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet,
MNASNet, MaxViT, and SqueezeNet's 1x1 convolution), ``head`` (Swin) or ``heads.head`` (ViT);
auxiliary heads are ``AuxLogits.fc`` (Inception v3) and ``aux1.fc2`` / ``aux2.fc2``
(GoogLeNet). Anything else falls back to the last Linear layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

HEAD_PATHS = ("fc", "classifier", "heads.head", "head", "heads", "last_linear")
AUX_HEAD_PATHS = ("AuxLogits.fc", "aux1.fc2", "aux2.fc2")
HeadLayer = nn.Linear | nn.Conv2d


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _last_layer(model: nn.Module, path: str) -> str | None:
    """The qualified name of the last Linear (or 1x1 Conv2d) at or under `path`."""
    module = _submodule(model, path)
    if module is None:
        return None
    if isinstance(module, HeadLayer):
        return path
    found = None
    for sub_name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) or (isinstance(sub, nn.Conv2d) and sub.kernel_size == (1, 1)):
            found = f"{path}.{sub_name}"
    return found


def find_heads(model: nn.Module) -> list[str]:
    """Qualified names of the classification layers: the main head first, then aux heads."""
    heads: list[str] = []
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and hasattr(model, "reset_classifier"):  # timm
        classifier = get_classifier()
        heads += [n for n, m in model.named_modules() if m is classifier and n]
    if not heads:
        for path in HEAD_PATHS:
            if (name := _last_layer(model, path)) is not None:
                heads.append(name)
                break
    if not heads:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise ValueError(f"{type(model).__name__} has no Linear head to replace")
        heads.append(linear[-1])
    heads += [p for p in AUX_HEAD_PATHS if isinstance(_submodule(model, p), HeadLayer)]
    return heads


def _fresh_layer(old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    raise TypeError(f"cannot replace a {type(old).__name__} head")


def head_classes(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    return int(getattr(layer, "out_features", 0))


def replace_heads(model: nn.Module, num_classes: int) -> list[str]:
    """Give every head (main and aux) `num_classes` fresh outputs; returns their names.

    Heads that already have `num_classes` outputs are replaced too: their weights belong to
    other classes. timm models use their own ``reset_classifier``.
    """
    if hasattr(model, "reset_classifier") and hasattr(model, "get_classifier"):
        model.reset_classifier(num_classes)
    else:
        for name in find_heads(model):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, _fresh_layer(getattr(parent, attr), num_classes))
    for attr in ("num_classes",):
        if isinstance(getattr(model, attr, None), int):
            setattr(model, attr, num_classes)
    return find_heads(model)


def _belongs(param_name: str, prefixes: Iterable[str]) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in prefixes)


def head_parameter_names(model: nn.Module) -> set[str]:
    heads = find_heads(model)
    return {n for n, _ in model.named_parameters() if _belongs(n, heads)}


def freeze_backbone(model: nn.Module, until: str | None = None) -> list[str]:
    """Stop gradients to the backbone; returns the frozen parameter names.

    Without `until`, everything but the heads is frozen. With `until` (a module name such as
    ``layer3`` or ``features.6``), every parameter up to and including that module's, in
    definition order, is frozen, and the rest trains.
    """
    names = [n for n, _ in model.named_parameters()]
    if until is None:
        heads = head_parameter_names(model)
        frozen = [n for n in names if n not in heads]
    else:
        hits = [i for i, n in enumerate(names) if _belongs(n, [until])]
        if not hits:
            top = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
            raise ValueError(
                f"--freeze-until {until!r} names no layer with parameters; top-level layers: "
                + ", ".join(top)
            )
        frozen = names[: hits[-1] + 1]
    frozen_set = set(frozen)
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen_set)
    for module in model.modules():
        if isinstance(module, _BatchNorm) and _all_frozen(module):
            module.frozen_stats = True  # kept after unfreeze(): see set_train_mode
    return frozen


def _all_frozen(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def unfreeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(True)


def set_train_mode(model: nn.Module, training: bool = True) -> None:
    """``model.train(training)``, but the BatchNorm layers of a frozen backbone stay in eval
    mode: they keep the running statistics the weights were trained with, also after
    ``unfreeze`` (their scale and shift then train). Switching them to batch statistics of the
    new data at the unfreeze epoch was measured to throw a fine-tuned head off (val accuracy
    0.86 -> 0.29), which is why Keras advises the same."""
    model.train(training)
    if not training:
        return
    for module in model.modules():
        if isinstance(module, _BatchNorm) and (
            _all_frozen(module) or getattr(module, "frozen_stats", False)
        ):
            module.eval()


def parameter_groups(
    model: nn.Module, lr: float, head_lr_mult: float = 1.0, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer groups ``backbone`` and ``head`` (lr x `head_lr_mult`) holding every
    parameter, frozen ones included: optimizers skip parameters without gradients, and
    unfreezing later needs no new optimizer (its state then resumes as saved)."""
    heads = head_parameter_names(model)
    backbone = [p for n, p in model.named_parameters() if n not in heads]
    head = [p for n, p in model.named_parameters() if n in heads]
    groups = [
        {"params": backbone, "lr": lr, "weight_decay": weight_decay, "name": "backbone"},
        {"params": head, "lr": lr * head_lr_mult, "weight_decay": weight_decay, "name": "head"},
    ]
    return [g for g in groups if g["params"]]


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
