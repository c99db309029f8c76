"""Training checkpoints: plain dicts of tensors and primitives, loadable with
``torch.load(path, weights_only=True)``.

A checkpoint carries everything ``--resume`` needs (model, optimizer, scheduler, AMP scaler,
EMA, epoch, early-stopping state, RNG states) and everything ``imgclf export`` needs (the
architecture and how to rebuild it, the class names, the eval preprocessing, the validation
accuracy of the weights it would export).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from imgclf.usererror import UserError


@dataclass
class RunState:
    """Where a run stands after an epoch; saved in the checkpoint for ``--resume``."""

    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    """Optimizer steps completed."""
    best_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    """Epochs since the monitored accuracy last improved (early stopping)."""
    stopped_early: bool = False


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if generator is not None:
        state["loader"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    ema: AveragedModel | None,
    state: RunState,
    generator: torch.Generator | None,
    meta: dict[str, Any],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The checkpoint dict after an epoch. `meta`: args, architecture, model_kwargs,
    class_names, preprocessing; `metrics`: the epoch's history row."""
    monitor = "ema_val_acc" if ema is not None else "val_acc"
    return {
        **meta,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "model_ema": ema.module.state_dict() if ema is not None else None,
        "model_ema_updates": int(ema.n_averaged) if ema is not None else 0,
        "epoch": state.epoch,
        "state": asdict(state),
        "rng": rng_state(generator),
        "metrics": dict(metrics),
        "monitor": monitor,
        "val_acc": float(metrics[monitor]),
        "best_val_acc": state.best_acc,
        "best_epoch": state.best_epoch,
    }


CHECKPOINT_HINT = (
    "pass the checkpoint.pth or best.pth that `imgclf train` wrote into its --output-dir "
    "(default runs/train)"
)


IMAGE_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"RIFF": "WebP",
}


def _looks_like(path: Path) -> str:
    """'it is a JPEG image' (PNG, ...) when the file starts like one, else ''."""
    with path.open("rb") as f:
        head = f.read(8)
    kind = next((k for magic, k in IMAGE_MAGIC.items() if head.startswith(magic)), "")
    return f"it is a {kind} image" if kind else ""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint `imgclf train` wrote; UserError naming the file when it is missing or is
    something else (an image, a bare state dict, a corrupt file)."""
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a checkpoint file" if path.is_dir() else "no such file"
        raise UserError(f"{path}: {what}", CHECKPOINT_HINT)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...: not a checkpoint
        # torch's own text advises weights_only=False, which would run the file's code: not said
        raise UserError(
            f"{path} is not a PyTorch checkpoint ({_looks_like(path) or type(exc).__name__})",
            CHECKPOINT_HINT,
        ) from exc
    if not isinstance(ckpt, dict) or "class_names" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of `imgclf train`", CHECKPOINT_HINT)
    return ckpt


def restore(
    ckpt: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    ema: AveragedModel | None,
    generator: torch.Generator | None,
) -> RunState:
    """Put a run back where `ckpt` left it; returns its RunState."""
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["lr_scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        if ckpt.get("model_ema") is None:
            raise ValueError("--model-ema was not on in the run being resumed")
        ema.module.load_state_dict(ckpt["model_ema"])
        ema.n_averaged.fill_(int(ckpt.get("model_ema_updates", 0)))
    if "rng" in ckpt:
        restore_rng(ckpt["rng"], generator)
    return RunState(**ckpt["state"])


def export_state(ckpt: dict[str, Any], use_ema: bool | None = None) -> tuple[dict, float, str]:
    """(state dict, its validation accuracy, "model" or "model_ema") that export should use:
    by default the weights the run monitored (the EMA when the run kept one)."""
    has_ema = ckpt.get("model_ema") is not None
    if use_ema is None:
        use_ema = has_ema and ckpt.get("monitor") == "ema_val_acc"
    if use_ema and not has_ema:
        raise ValueError("the checkpoint has no EMA weights")
    key = "model_ema" if use_ema else "model"
    metrics = ckpt.get("metrics", {})
    acc = metrics.get("ema_val_acc" if use_ema else "val_acc", ckpt.get("val_acc"))
    return ckpt[key], float(acc), key
