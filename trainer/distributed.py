"""Data-parallel training under torchrun: one process per GPU (or several gloo processes on a CPU).

    torchrun --nproc_per_node 4 -m babysit train --model resnet ...

Every rank holds the whole (small) dataset on its device and takes its own shard of each epoch's permutation,
drawn from the same seed on every rank (DistributedSampler's scheme, without a DataLoader). DistributedDataParallel
averages gradients. Rank 0 records the run (babysit.Run writes from rank 0 only); the ranks agree on stopping at
the few points where they already synchronize.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from babysit.trainer.device import resolve_device

__all__ = ["Dist", "setup", "teardown", "shard", "any_rank"]


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we started the process group, so we end it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group if torchrun started us (WORLD_SIZE > 1); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, owned), device


def teardown(d: Dist) -> None:
    if d.owned and dist.is_initialized():
        dist.destroy_process_group()


def shard(perm: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's equal-length share of a permutation (the remainder is dropped, as DistributedSampler does)."""
    if d.world == 1:
        return perm
    return perm[d.rank::d.world][: len(perm) // d.world]


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if it is true on any (a collective: call it at the same point on all ranks)."""
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
