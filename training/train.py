"""Train or fine-tune a classifier: ``imgclf train`` (torchvision reference-script shape).

Writes into ``--output-dir``: ``checkpoint.pth`` (last epoch) and ``best.pth`` (best validation
accuracy), ``history.csv``, ``loss.png``, ``accuracy.png``, ``args.yaml``/``args.json`` and,
when files were skipped, ``skipped_images.txt``. Distributed with torchrun (see
imgclf.training.loop.distributed); only rank 0 writes.

    python -m imgclf.training.train --dataset digits --model digits_cnn --epochs 30 --output-dir runs/d
    python -m imgclf.training.train --data-path DIR --model resnet18 --weights DEFAULT --freeze-backbone
    torchrun --nproc_per_node 2 -m imgclf.training.train --dataset digits --epochs 5
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from imgclf.training.config import (
    get_args_parser,
    parse_args,
    preprocessing_from_args,
    resolve_args,
    saved_args,
    write_args,
)
from imgclf.training.data.datasets import (
    ImageDataset,
    ShardSampler,
    SplitData,
    format_class_counts,
    load_split,
)
from imgclf.training.data.presets import EvalPreset, TrainPreset
from imgclf.training.loop import checkpoint as ckpt_mod
from imgclf.training.loop.distributed import DistInfo, cleanup, init_distributed, process_device
from imgclf.training.loop.epoch import StepOptions, ema_model, evaluate, train_one_epoch
from imgclf.training.loop.monitor import TensorBoard, plot_history, read_history, write_history
from imgclf.training.models.architectures import (
    build_model,
    create_model,
    rebuild_kwargs,
    size_kwargs,
)
from imgclf.training.models.transfer import (
    count_trainable,
    freeze_backbone,
    parameter_groups,
    unfreeze,
)
from imgclf.training.models.weights import WeightsUnavailable
from imgclf.training.utils import atomic_save, seed_everything, seed_worker, use_deterministic

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


def build_loaders(
    args: argparse.Namespace, split: SplitData, info: DistInfo, generator: torch.Generator
) -> tuple[DataLoader, DataLoader, DistributedSampler | None]:
    spec = preprocessing_from_args(args)
    train_ds = ImageDataset(
        split.train_samples, split.train_labels, TrainPreset(spec, args.augmentation)
    )
    val_ds = ImageDataset(split.val_samples, split.val_labels, EvalPreset(spec))
    kw: dict[str, Any] = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "persistent_workers": args.workers > 0,
        "pin_memory": args.device.startswith("cuda"),
        "worker_init_fn": seed_worker if args.workers > 0 else None,
    }
    sampler = None
    if info.enabled:
        sampler = DistributedSampler(train_ds, info.world_size, info.rank, seed=args.seed)
        train_loader = DataLoader(train_ds, sampler=sampler, **kw)
    else:
        train_loader = DataLoader(train_ds, shuffle=True, generator=generator, **kw)
    val_sampler = ShardSampler(len(val_ds), info.rank, info.world_size)
    return train_loader, DataLoader(val_ds, sampler=val_sampler, **kw), sampler


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, args.lr, args.head_lr_mult, args.weight_decay)
    if args.opt == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    return torch.optim.AdamW(groups, lr=args.lr)


def build_scheduler(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: cosine (to --lr-min), step or constant, after a linear warm-up."""
    sched = torch.optim.lr_scheduler
    warmup = max(0, min(args.lr_warmup_epochs, args.epochs - 1))
    if args.lr_scheduler == "cosine":
        main: sched.LRScheduler = sched.CosineAnnealingLR(
            optimizer, T_max=max(1, args.epochs - warmup), eta_min=args.lr_min
        )
    elif args.lr_scheduler == "step":
        main = sched.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    else:
        main = sched.LambdaLR(optimizer, lambda _: 1.0)
    if not warmup:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=args.lr_warmup_decay, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def amp_settings(
    args: argparse.Namespace, device: torch.device
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype, grad scaler): bf16 or fp16 autocast on CUDA, nothing on CPU."""
    if not args.amp:
        return None, None
    if device.type != "cuda":
        print("--amp: mixed precision is for CUDA; training in float32 on CPU")
        return None, None
    bf16 = args.amp_dtype == "bf16" or (args.amp_dtype == "auto" and torch.cuda.is_bf16_supported())
    if bf16:
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


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
    info = init_distributed(args.device)
    try:
        return _train(args, info)
    finally:
        cleanup(info)


def _train(args: argparse.Namespace, info: DistInfo) -> TrainResult:
    main_proc = info.is_main

    def log(*parts: object) -> None:
        if main_proc:
            print(*parts, flush=True)

    out = Path(args.output_dir)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
    use_deterministic(args.deterministic)
    generator = seed_everything(args.seed)
    device = process_device(args.device, info)

    split = load_split(
        args.dataset, args.data_path, args.val_fraction, args.split_seed, not args.no_image_check
    )
    classes = split.class_names
    log(f"dataset {args.dataset}: {len(classes)} classes\n{format_class_counts(split)}")
    if split.skipped:
        log(f"skipped {len(split.skipped)} unreadable image file(s), listed in skipped_images.txt")
        for path, reason in split.skipped[:10]:
            log(f"  {path}: {reason}")
        if main_proc:
            lines = [f"{p}\t{r}" for p, r in split.skipped]
            (out / "skipped_images.txt").write_text("\n".join(lines) + "\n")
    train_loader, val_loader, train_sampler = build_loaders(args, split, info, generator)

    resume = ckpt_mod.load_checkpoint(args.resume) if args.resume else None
    if resume is not None:
        if resume["class_names"] != classes:
            raise ValueError(f"{args.resume} was trained on other classes: {resume['class_names']}")
        model = create_model(args.model, len(classes), **resume.get("model_kwargs", {}))
    else:
        kwargs = size_kwargs(args.model, args.input_size)
        if kwargs:
            log(f"{args.model} at input size {args.input_size}: training without its aux head")
        model = build_model(args.model, len(classes), args.weights, **kwargs)
    meta = {
        "args": saved_args(args),
        "architecture": args.model,
        "model_kwargs": rebuild_kwargs(model),
        "class_names": list(classes),
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
    frozen = bool(args.freeze_backbone or args.freeze_until)
    if frozen:
        freeze_backbone(model, args.freeze_until)
    trainable, total = count_trainable(model)
    log(f"model {args.model}: {total:,} parameters, {trainable:,} trainable")
    if args.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if args.channels_last else torch.preserve_format
    model.to(device, memory_format=fmt)

    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(args, model)
    scheduler = build_scheduler(args, optimizer)
    amp_dtype, scaler = amp_settings(args, device)
    ema = ema_model(model, args.model_ema_decay) if args.model_ema else None
    state = ckpt_mod.RunState()
    history: list[dict[str, float]] = []
    if resume is not None:
        state = ckpt_mod.restore(
            resume,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            ema=ema,
            generator=generator,
        )
        history = [r for r in read_history(out / "history.csv") if r["epoch"] <= state.epoch]
        log(f"resumed from {args.resume} after epoch {state.epoch}")
    if info.enabled:
        torch.manual_seed(args.seed + info.rank + 1000 * state.epoch)  # distinct augmentations
    if main_proc:
        write_args(out, args)

    opts = StepOptions(
        device=device,
        dist=info,
        amp_dtype=amp_dtype,
        scaler=scaler,
        clip_grad_norm=args.clip_grad_norm,
        aux_loss_weight=args.aux_loss_weight,
        channels_last=args.channels_last,
        ema=ema,
        ema_steps=args.model_ema_steps,
        progress=not args.no_progress,
    )
    if args.test_only:
        val_loss, val_acc = evaluate(model, criterion, val_loader, opts, "test")
        log(f"test-only: val loss {val_loss:.4f} acc {val_acc:.4f} on {len(split.val_labels)}")
        if ema is not None:
            ema_loss, ema_acc = evaluate(ema.module, criterion, val_loader, opts, "test EMA")
            log(f"test-only: EMA val loss {ema_loss:.4f} acc {ema_acc:.4f}")
        return TrainResult(out, state.epoch, val_acc, max(state.best_acc, val_acc), state.epoch)

    tensorboard = TensorBoard(out / "tensorboard", args.tensorboard and main_proc)
    train_model = _wrap(model, info, device)
    if info.enabled:
        global_batch = args.batch_size * info.world_size
        log(f"distributed: {info.world_size} processes, global batch {global_batch}")
    val_acc = history[-1]["val_acc"] if history else float("nan")
    for epoch in range(state.epoch, args.epochs):
        if state.stopped_early:
            break
        if frozen and args.unfreeze_at_epoch is not None and epoch >= args.unfreeze_at_epoch:
            unfreeze(model)
            frozen = False
            train_model = _wrap(model, info, device)
            log(f"epoch {epoch + 1}: backbone unfrozen ({count_trainable(model)[0]:,} trainable)")
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        started = time.monotonic()
        lr = optimizer.param_groups[0]["lr"]
        desc = f"epoch {epoch + 1}/{args.epochs}"
        train_loss, train_acc, state.step = train_one_epoch(
            train_model, criterion, optimizer, train_loader, opts, desc + " train", state.step
        )
        scheduler.step()
        val_loss, val_acc = evaluate(model, criterion, val_loader, opts, desc + " val")
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "time_s": 0.0,
        }
        if ema is not None:
            row["ema_val_loss"], row["ema_val_acc"] = evaluate(
                ema.module, criterion, val_loader, opts, desc + " val EMA"
            )
        row["time_s"] = round(time.monotonic() - started, 3)
        history.append(row)
        monitored = row["ema_val_acc"] if ema is not None else val_acc
        improved = monitored > state.best_acc + args.min_delta
        if improved:
            state.best_acc, state.best_epoch, state.bad_epochs = monitored, epoch + 1, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch + 1
        state.stopped_early = bool(args.patience) and state.bad_epochs >= args.patience
        if main_proc:
            checkpoint = ckpt_mod.make_checkpoint(
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                ema=ema,
                state=state,
                generator=generator,
                meta=meta,
                metrics=row,
            )
            atomic_save(checkpoint, out / "checkpoint.pth")
            if improved:
                atomic_save(checkpoint, out / "best.pth")
            write_history(out / "history.csv", history)
            plot_history(history, out, title=f"{args.model} on {args.dataset}")
            tensorboard.log(row)
        ema_text = f" (EMA {row['ema_val_acc']:.4f})" if ema is not None else ""
        log(
            f"{desc}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}{ema_text} | lr {lr:.4g} | "
            f"{row['time_s']:.1f}s" + (" *" if improved else "")
        )
        if state.stopped_early:
            log(f"early stopping: no improvement for {state.bad_epochs} epochs (--patience)")
    tensorboard.close()
    log(f"best val acc {state.best_acc:.4f} (epoch {state.best_epoch}); artefacts in {out}")
    return TrainResult(
        out, state.epoch, val_acc, state.best_acc, state.best_epoch, state.stopped_early
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, get_args_parser())
    try:
        train(args)
    except (ValueError, FileNotFoundError, WeightsUnavailable) as exc:
        print(f"train failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
