"""Data-parallel training: the torchrun process group, and global batches split between ranks.

Launch with ``torchrun --nproc_per_node=N -m segdiff.cli train ...`` (docs/training.md). torchrun
sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them a run is one process
and nothing here communicates.

The global batch keeps the paper's meaning: ``train.batch_size`` samples per optimizer step over
all ranks, each rank taking ``batch_size / world_size`` of them. :class:`GlobalBatchSampler` draws
the same global batches whatever the world size and rank r takes the r-th slice of each; DDP
averages the ranks' gradients of their mean losses, which is the gradient of the mean loss over
the global batch. So N ranks make the single-process update, up to float summation order.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .seeding import seeded_generator


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, logs and writes checkpoints; the others only compute."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join torchrun's process group if launched by it; return the ranks and this rank's device.

    Backend: NCCL on CUDA, gloo on the CPU. Each CUDA rank takes GPU LOCAL_RANK unless the
    device names an index.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training runs on cuda (NCCL) or cpu (gloo), not on {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return ranks, device


def teardown(ranks: Ranks) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor, ranks: Ranks) -> Tensor:
    """Sum over ranks, in place (identity for one process)."""
    if ranks.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def from_main(value: int, ranks: Ranks, device: torch.device) -> int:
    """Rank 0's `value` on every rank (the others' values are ignored): one decision for all."""
    if not ranks.enabled:
        return value
    tensor = torch.tensor([value if ranks.is_main else 0], dtype=torch.int64, device=device)
    return int(all_reduce_sum(tensor, ranks).item())


def barrier(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.barrier()


def gather_objects(obj, ranks: Ranks) -> list:
    """Every rank's `obj`, in rank order, on every rank (in-memory pickling between our own ranks)."""
    if not ranks.enabled:
        return [obj]
    out = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def weights_fingerprint(module: nn.Module) -> int:
    """An exact integer summary of the parameters' bits: equal weights give equal fingerprints.

    The bits are summed as integers, so the result does not depend on summation order or
    hardware, unlike a float sum.
    """
    views = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}
    total = 0
    for p in module.parameters():
        bits = p.detach().reshape(-1).view(views[p.element_size()]).to(torch.int64)
        total = (total * 1_000_003 + int(bits.sum())) % (1 << 62)
    return total


def check_in_sync(module: nn.Module, ranks: Ranks, device: torch.device) -> None:
    """Raise if the ranks' weights differ (they cannot, unless something is badly wrong)."""
    if not ranks.enabled:
        return
    value = weights_fingerprint(module)
    both = torch.tensor([value, -value], dtype=torch.int64, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    if int(both[0]) != -int(both[1]):
        raise RuntimeError(f"rank {ranks.rank}: the ranks' weights have diverged (fingerprints differ); "
                           "the run cannot continue")


class GlobalBatchSampler:
    """This rank's share of each global batch of an epoch, from a given batch on.

    Epoch e's order is a permutation seeded by (seed, e) alone, not drawn from a generator that
    runs on, so any position (epoch, batch) can be reached again without replaying the run: a
    resumed run continues with the very batches it would have seen. The incomplete last batch of
    an epoch is dropped; a dataset smaller than one global batch is repeated to fill it.

        sampler = GlobalBatchSampler(100, 8, seed=0, rank=1, world_size=2)
        sampler.set_position(epoch=3, start=5)  # skip the 5 batches already used in epoch 3
        DataLoader(dataset, batch_sampler=sampler)  # lists of 4 indices: the second half of each batch
    """

    def __init__(self, num_items: int, global_batch: int, *, seed: int, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError("the training set is empty")
        if global_batch % world_size:
            raise ValueError(f"train.batch_size={global_batch} (the global batch) must be divisible by the "
                             f"number of processes, {world_size}: each takes batch_size / {world_size} samples")
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.rank, self.world_size, self.per_rank = rank, world_size, global_batch // world_size
        self.batches_per_epoch = max(1, num_items // global_batch)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields epoch `epoch` from its batch `start` on."""
        if not 0 <= start < self.batches_per_epoch:
            raise ValueError(f"start={start} must be in [0, {self.batches_per_epoch})")
        self.epoch, self.start = epoch, start

    def permutation(self, epoch: int) -> Tensor:
        """The item order of epoch `epoch`, trimmed (or repeated) to whole global batches."""
        order = torch.randperm(self.num_items, generator=seeded_generator("batches", self.seed, epoch))
        need = self.batches_per_epoch * self.global_batch
        return order.repeat(math.ceil(need / self.num_items))[:need]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self):
        batches = self.permutation(self.epoch).view(self.batches_per_epoch, self.world_size, self.per_rank)
        for batch in batches[self.start:, self.rank]:
            yield batch.tolist()
