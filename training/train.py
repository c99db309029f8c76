"""Train or fine-tune a classifier: ``imgclf train`` (torchvision reference-script shape).

Writes into ``--output-dir``: ``checkpoint.pth`` (last epoch) and ``best.pth`` (best validation
accuracy), ``history.csv``, ``loss.png``, ``accuracy.png``, ``args.yaml``/``args.json`` and,
when files were skipped, ``skipped_images.txt``. Distributed with torchrun (see
imgclf.training.loop.distributed); only rank 0 writes.

    python -m imgclf.training.train --dataset digits --model digits_cnn --epochs 30 \
        --output-dir runs/d
    python -m imgclf.training.train --data-path DIR --model resnet18 --weights DEFAULT \
        --freeze-backbone
    torchrun --nproc_per_node 2 -m imgclf.training.train --dataset digits --epochs 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from imgclf.training.config import (
    get_args_parser,
    parse_args,
    resolve_args,
    saved_args,
    write_args,
)
from imgclf.training.data.datasets import (
    SplitData,
)
from imgclf.training.data.loaders import build_loaders, load_data
from imgclf.training.loop import checkpoint as ckpt_mod
from imgclf.training.loop.distributed import (
    DistInfo,
    RendezvousError,
    all_agree,
    cleanup,
    init_distributed,
    process_device,
)
from imgclf.training.loop.epoch import StepOptions, ema_model, train_one_epoch, validate_one_epoch
from imgclf.training.loop.monitor import TensorBoard, plot_history, read_history, write_history
from imgclf.training.loop.optim import amp_settings, build_optimizer, build_scheduler
from imgclf.training.models.architectures import create_model, rebuild_kwargs, size_kwargs
from imgclf.training.models.transfer import (
    count_trainable,
    freeze_backbone,
    unfreeze,
)
from imgclf.training.models.weights import WeightsUnavailable, build_model
from imgclf.training.utils import atomic_save, seed_everything, use_deterministic
from imgclf.usererror import UserError, run_main

__all__ = ["TrainResult", "get_args_parser", "main", "parse_args", "train"]


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    epochs: int
    """Epochs completed."""
    final_val_acc: float
    best_val_acc: float
    best_epoch: int
    stopped_early: bool = False


def _wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def train(args: argparse.Namespace) -> TrainResult:
    """Run the training described by `args` (from parse_args) and return its summary."""
    args = resolve_args(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA device is available")
    info = init_distributed(args.device, args.dist_timeout)
    try:
        return _train(args, info)
    finally:
        cleanup(info)


@dataclass
class Run:
    """One training run's moving parts, built by `_train` and passed to each step."""

    args: argparse.Namespace
    info: DistInfo
    out: Path
    log: Callable[..., None]
    generator: torch.Generator
    split: SplitData
    model: nn.Module
    frozen: bool
    meta: dict[str, Any]
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    ema: Any
    opts: StepOptions
    state: ckpt_mod.RunState
    history: list[dict[str, float]]


def _train(args: argparse.Namespace, info: DistInfo) -> TrainResult:
    def log(*parts: object) -> None:
        if info.is_main:
            print(*parts, flush=True)

    out = Path(args.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    use_deterministic(args.deterministic)
    generator = seed_everything(args.seed)
    split = load_data(args, out, info, log)
    train_loader, val_loader, train_sampler = build_loaders(args, split, info, generator)
    run = start_run(args, info, out, log, generator, split)
    if args.test_only:
        return test_only(run, val_loader)
    tensorboard = TensorBoard(out / "tensorboard", args.tensorboard and info.is_main)
    train_model = _wrap(run.model, info, run.opts.device)
    if info.enabled:
        global_batch = args.batch_size * info.world_size
        log(f"distributed: {info.world_size} processes, global batch {global_batch}")
    state = run.state
    val_acc = run.history[-1]["val_acc"] if run.history else float("nan")
    for epoch in range(state.epoch, args.epochs):
        if state.stopped_early:
            break
        if run.frozen and args.unfreeze_at_epoch is not None and epoch >= args.unfreeze_at_epoch:
            unfreeze(run.model)
            run.frozen = False
            train_model = _wrap(run.model, info, run.opts.device)
            trainable = count_trainable(run.model)[0]
            log(f"epoch {epoch + 1}: backbone unfrozen ({trainable:,} trainable)")
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        row = run_epoch(run, epoch, train_model, train_loader, val_loader)
        val_acc = row["val_acc"]
        if state.stopped_early:
            log(f"early stopping: no improvement for {state.bad_epochs} epochs (--patience)")
        if info.is_main:
            tensorboard.log(row)
    tensorboard.close()
    log(f"best val acc {state.best_acc:.4f} (epoch {state.best_epoch}); artefacts in {out}")
    return TrainResult(
        out, state.epoch, val_acc, state.best_acc, state.best_epoch, state.stopped_early
    )


def build_run_model(
    args: argparse.Namespace, classes: list[str], resume: dict | None, log: Callable[..., None]
) -> nn.Module:
    """The model to train: rebuilt from a checkpoint to resume, else by name and --weights."""
    if resume is not None:
        if resume["class_names"] != classes:
            raise ValueError(
                f"the checkpoint was trained on other classes: {resume['class_names']}"
            )
        return create_model(args.model, len(classes), **resume.get("model_kwargs", {}))
    kwargs = size_kwargs(args.model, args.input_size)
    if kwargs:
        log(f"{args.model} at input size {args.input_size}: training without its aux head")
    return build_model(args.model, len(classes), args.weights, **kwargs)


def run_meta(args: argparse.Namespace, model: nn.Module, split: SplitData) -> dict[str, Any]:
    """What every checkpoint carries about the run (export reads it)."""
    return {
        "args": saved_args(args),
        "architecture": args.model,
        "model_kwargs": rebuild_kwargs(model),
        "class_names": list(split.class_names),
        "data": {
            "train_images": len(split.train_labels),
            "val_images": len(split.val_labels),
            "skipped_files": len(split.skipped),
        },
        "preprocessing": {
            "input_size": [args.input_size, args.input_size],
            "resize_size": args.resize_size,
            "interpolation": args.interpolation,
            "mean": list(args.mean),
            "std": list(args.std),
        },
    }


def start_run(
    args: argparse.Namespace, info: DistInfo, out: Path, log: Callable[..., None],
    generator: torch.Generator, split: SplitData,
) -> Run:  # fmt: skip
    """Model, optimiser, schedule, AMP and EMA on the device; the state of a resumed run."""
    device = process_device(args.device, info)
    resume_path = args.resume
    if args.auto_resume and resume_path is None:
        # Every rank must see the same checkpoint: the output directory is a shared volume.
        last = out / "checkpoint.pth"
        seen = f"{last} exists (--auto-resume needs an --output-dir every node shares)"
        if all_agree(last.is_file(), seen, device, info):
            resume_path = last
    resume = ckpt_mod.load_checkpoint(resume_path) if resume_path else None
    model = build_run_model(args, list(split.class_names), resume, log)
    meta = run_meta(args, model, split)
    frozen = bool(args.freeze_backbone or args.freeze_until)
    if frozen:
        freeze_backbone(model, args.freeze_until)
    trainable, total = count_trainable(model)
    log(f"model {args.model}: {total:,} parameters, {trainable:,} trainable")
    if args.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if args.channels_last else torch.preserve_format
    model.to(device, memory_format=fmt)
    optimizer = build_optimizer(args, model)
    scheduler = build_scheduler(args, optimizer)
    amp_dtype, scaler = amp_settings(args, device)
    ema = ema_model(model, args.model_ema_decay) if args.model_ema else None
    state, history = ckpt_mod.RunState(), []
    if resume is not None:
        state = ckpt_mod.restore(
            resume, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            ema=ema, generator=generator,
        )  # fmt: skip
        history = [r for r in read_history(out / "history.csv") if r["epoch"] <= state.epoch]
        log(f"resumed from {resume_path} after epoch {state.epoch}")
    if info.enabled:
        torch.manual_seed(args.seed + info.rank + 1000 * state.epoch)  # distinct augmentations
    if info.is_main:
        write_args(out, args)
    opts = StepOptions(
        device=device, dist=info, amp_dtype=amp_dtype, scaler=scaler,
        clip_grad_norm=args.clip_grad_norm, aux_loss_weight=args.aux_loss_weight,
        channels_last=args.channels_last, ema=ema, ema_steps=args.model_ema_steps,
        progress=not args.no_progress,
    )  # fmt: skip
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    return Run(
        args, info, out, log, generator, split, model, frozen, meta, criterion, optimizer,
        scheduler, scaler, ema, opts, state, history,
    )  # fmt: skip


def test_only(run: Run, val_loader: DataLoader) -> TrainResult:
    """--test-only: validate the (resumed) model once, train nothing."""
    val_loss, val_acc = validate_one_epoch(run.model, run.criterion, val_loader, run.opts, "test")
    run.log(f"test-only: val loss {val_loss:.4f} acc {val_acc:.4f} on {len(run.split.val_labels)}")
    if run.ema is not None:
        ema_loss, ema_acc = validate_one_epoch(
            run.ema.module, run.criterion, val_loader, run.opts, "test EMA"
        )
        run.log(f"test-only: EMA val loss {ema_loss:.4f} acc {ema_acc:.4f}")
    state = run.state
    return TrainResult(run.out, state.epoch, val_acc, max(state.best_acc, val_acc), state.epoch)


def run_epoch(
    run: Run, epoch: int, train_model: nn.Module, train_loader: DataLoader,
    val_loader: DataLoader,
) -> dict[str, float]:  # fmt: skip
    """Train and validate one epoch, update the early-stopping state, save (rank 0)."""
    args, state, opts = run.args, run.state, run.opts
    started = time.monotonic()
    lr = run.optimizer.param_groups[0]["lr"]
    desc = f"epoch {epoch + 1}/{args.epochs}"
    train_loss, train_acc, state.step = train_one_epoch(
        train_model, run.criterion, run.optimizer, train_loader, opts, desc + " train", state.step
    )
    run.scheduler.step()
    val_loss, val_acc = validate_one_epoch(
        run.model, run.criterion, val_loader, opts, desc + " val"
    )
    row = {
        "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
        "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "time_s": 0.0,
    }  # fmt: skip
    if run.ema is not None:
        row["ema_val_loss"], row["ema_val_acc"] = validate_one_epoch(
            run.ema.module, run.criterion, val_loader, opts, desc + " val EMA"
        )
    row["time_s"] = round(time.monotonic() - started, 3)
    run.history.append(row)
    monitored = row["ema_val_acc"] if run.ema is not None else val_acc
    improved = monitored > state.best_acc + args.min_delta
    if improved:
        state.best_acc, state.best_epoch, state.bad_epochs = monitored, epoch + 1, 0
    else:
        state.bad_epochs += 1
    state.epoch = epoch + 1
    state.stopped_early = bool(args.patience) and state.bad_epochs >= args.patience
    if run.info.is_main:
        save_epoch(run, row, improved)
    ema_text = f" (EMA {row['ema_val_acc']:.4f})" if run.ema is not None else ""
    run.log(
        f"{desc}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
        f"val loss {val_loss:.4f} acc {val_acc:.4f}{ema_text} | lr {lr:.4g} | "
        f"{row['time_s']:.1f}s" + (" *" if improved else "")
    )
    return row


def save_epoch(run: Run, row: dict[str, float], improved: bool) -> None:
    """checkpoint.pth (and best.pth when it improved), history.csv and the plots."""
    checkpoint = ckpt_mod.make_checkpoint(
        model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler,
        ema=run.ema, state=run.state, generator=run.generator, meta=run.meta, metrics=row,
    )  # fmt: skip
    atomic_save(checkpoint, run.out / "checkpoint.pth")
    if improved:
        atomic_save(checkpoint, run.out / "best.pth")
    write_history(run.out / "history.csv", run.history)
    plot_history(run.history, run.out, title=f"{run.args.model} on {run.args.dataset}")


def run(argv: list[str] | None = None) -> int:
    """The command; a failure raises (UserError for a known mistake)."""
    args = parse_args(argv, get_args_parser())
    try:
        train(args)
    except (ValueError, FileNotFoundError, WeightsUnavailable, RendezvousError) as exc:
        raise UserError(f"train failed: {exc}") from exc
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command as `imgclf train` runs it: a failure is a line and an exit status."""
    return run_main("imgclf train", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
