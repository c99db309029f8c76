"""Distributed data parallel under ``torchrun``: NCCL on GPUs, gloo on CPU.

    torchrun --nproc_per_node 2 -m imgclf.training.train --dataset digits ...

Each process trains on its shard (DistributedSampler) with ``--batch-size`` images per step;
metrics are summed across processes; only rank 0 prints progress and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set), else DistInfo()."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return info


def process_device(device: str, info: DistInfo) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under torchrun on GPUs."""
    if device.startswith("cuda") and info.enabled:
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def all_reduce_sum(values: Sequence[float], device: torch.device, info: DistInfo) -> list[float]:
    """Element-wise sums over every process (the values themselves when not distributed)."""
    if not info.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
