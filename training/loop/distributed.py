"""Distributed data parallel under ``torchrun``: NCCL on GPUs, gloo on CPU.

    torchrun --nproc_per_node 2 -m imgclf.training.train --dataset digits ...
    torchrun --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        -m imgclf.training.train ...   # on each node

RANK, WORLD_SIZE and LOCAL_RANK come from the environment (torchrun, or the Kubeflow training
operator's MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE without torchrun). Each process trains on
its shard (sampler or data shards split by the global rank) with ``--batch-size`` images per
step; metrics are summed across processes; only global rank 0 prints progress and writes files.
"""

from __future__ import annotations

import datetime
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


DEFAULT_TIMEOUT_S = 600.0
"""How long joining the process group (and any collective) may wait for the other ranks."""


class RendezvousError(RuntimeError):
    """The process group could not form: a rank is missing or the endpoint is unreachable."""


def init_distributed(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set), else DistInfo().

    A group that cannot form within `timeout_s` raises RendezvousError naming the endpoint.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or "RANK" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
        except (RuntimeError, TimeoutError, ValueError) as exc:
            endpoint = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RendezvousError(
                f"rank {info.rank} of {world_size} could not join the process group at "
                f"{endpoint} within {timeout_s:g}s ({reason})"
            ) from None
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


def all_agree(flag: bool, what: str, device: torch.device, info: DistInfo) -> bool:
    """`flag` when every process has the same value; a ValueError naming `what` otherwise."""
    count = int(all_reduce_sum([float(flag)], device, info)[0])
    if count not in (0, info.world_size):
        raise ValueError(f"{what} on {count} of {info.world_size} processes only")
    return bool(count)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
