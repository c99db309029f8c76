"""One epoch of training or validation: AMP, gradient clipping, aux heads, EMA, metrics summed
across processes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from imgclf.training.loop.distributed import DistInfo, all_reduce_sum
from imgclf.training.models.transfer import set_train_mode


@dataclass
class StepOptions:
    """How a batch is run: the same for every epoch of a run."""

    device: torch.device
    dist: DistInfo
    amp_dtype: torch.dtype | None = None
    """Autocast dtype on CUDA; None runs in float32."""
    scaler: torch.amp.GradScaler | None = None
    """For float16 autocast."""
    clip_grad_norm: float | None = None
    aux_loss_weight: float = 0.4
    channels_last: bool = False
    ema: AveragedModel | None = None
    ema_steps: int = 1
    progress: bool = True


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s parameters and buffers. Its decay ramps up
    as min(decay, (1 + n) / (10 + n)) so that short runs are not dominated by the init."""

    def average(avg: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return avg * d + current * (1.0 - d)

    return AveragedModel(model, avg_fn=average, use_buffers=True)


def split_output(
    output: torch.Tensor | tuple, targets: torch.Tensor, criterion: nn.Module, aux_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(main logits, loss); Inception/GoogLeNet return aux logits in training mode, whose
    losses count with `aux_weight`."""
    if isinstance(output, torch.Tensor):
        return output, criterion(output, targets)
    logits, *aux = output
    loss = criterion(logits, targets)
    for extra in aux:
        if extra is not None:
            loss = loss + aux_weight * criterion(extra, targets)
    return logits, loss


def _batches(loader: DataLoader, desc: str, opts: StepOptions) -> tqdm:
    show = opts.progress and opts.dist.is_main and sys.stderr.isatty()  # no bars in a log file
    return tqdm(loader, desc=desc, leave=False, disable=not show, dynamic_ncols=True)


def _to_device(images: torch.Tensor, targets: torch.Tensor, opts: StepOptions) -> tuple:
    fmt = torch.channels_last if opts.channels_last else torch.contiguous_format
    non_blocking = opts.device.type == "cuda"
    return (
        images.to(opts.device, memory_format=fmt, non_blocking=non_blocking),
        targets.to(opts.device, non_blocking=non_blocking),
    )


def _autocast(opts: StepOptions) -> contextlib.AbstractContextManager:
    if opts.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(opts.device.type, dtype=opts.amp_dtype)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    opts: StepOptions,
    desc: str,
    step: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> tuple[float, float, int]:
    """Train one pass over `loader`; returns (mean loss, accuracy, steps done in total)."""
    set_train_mode(model, True)
    total_loss, correct, seen = 0.0, 0, 0
    bar = _batches(loader, desc, opts)
    for images, targets in bar:
        images, targets = _to_device(images, targets, opts)
        with _autocast(opts):
            logits, loss = split_output(model(images), targets, criterion, opts.aux_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        if opts.scaler is not None:
            opts.scaler.scale(loss).backward()
            if opts.clip_grad_norm:
                opts.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
            opts.scaler.step(optimizer)
            opts.scaler.update()
        else:
            loss.backward()
            if opts.clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
            optimizer.step()
        step += 1
        if opts.ema is not None and step % opts.ema_steps == 0:
            opts.ema.update_parameters(getattr(model, "module", model))
        if on_step is not None:
            on_step(step)
        n = targets.shape[0]
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == targets).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], opts.device, opts.dist)
    return total_loss / max(seen, 1), correct / max(seen, 1), step


@torch.no_grad()
def validate_one_epoch(
    model: nn.Module, criterion: nn.Module, loader: DataLoader, opts: StepOptions, desc: str
) -> tuple[float, float]:
    """Validate `model` on `loader` (this process's shard); returns the global (loss, acc)."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    bar = _batches(loader, desc, opts)
    for images, targets in bar:
        images, targets = _to_device(images, targets, opts)
        with _autocast(opts):
            logits = model(images)
            loss = criterion(logits, targets)
        n = targets.shape[0]
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == targets).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], opts.device, opts.dist)
    return total_loss / max(seen, 1), correct / max(seen, 1)
