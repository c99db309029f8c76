"""The optimiser, its per-epoch learning-rate schedule and mixed precision, from the
arguments of ``imgclf train``."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from imgclf.training.models.transfer import parameter_groups


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
