"""The distributed world: which process this is, and what the processes share.

Under ``torchrun`` every process finds its place in the environment: ``RANK`` (0 to
``WORLD_SIZE - 1``, over all machines), ``LOCAL_RANK`` (its GPU on this machine) and
``WORLD_SIZE``. Without ``torchrun`` there is one process, rank 0. :func:`current_world`
reads them once; everything else here asks it, so nothing else in octswap reads them.

Example:
    >>> current_world().is_main   # one process, or rank 0 of many   # doctest: +SKIP
    True
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "World",
    "all_mean",
    "average_",
    "broadcast_flag",
    "current_world",
    "data_parallel",
    "is_main_process",
    "local_device",
    "process_group",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run.

    Attributes:
        rank: Global rank, 0 to ``world_size - 1``.
        local_rank: Rank on this machine (the index of its GPU).
        world_size: How many processes take part (1: not distributed).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that measures, prints and saves."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> World:
        """The world ``torchrun`` describes in ``environ`` (default: ``os.environ``).

        Raises:
            ValueError: ``RANK``, ``LOCAL_RANK`` or ``WORLD_SIZE`` is not an integer.
        """
        env = os.environ if environ is None else environ
        size = int(env.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", "0")), world_size=size)


@functools.cache
def current_world() -> World:
    """This process's :class:`World`, read from the environment on the first call."""
    return World.from_env()


def is_main_process() -> bool:
    """Whether this process is rank 0 (always, without ``torchrun``): it alone prints and saves."""
    return current_world().is_main


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the process group of a distributed world for the ``with`` block, and leave it after.

    A group that exists already (the caller's) is used and left alone. The backend is
    NCCL for ``cuda`` devices, gloo otherwise. Yields the :func:`current_world`.
    """
    world = current_world()
    joined = world.is_distributed and not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield world
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def local_device(device: torch.device, world: World) -> torch.device:
    """``cuda:LOCAL_RANK`` (made the current device) for a distributed CUDA run; else ``device``."""
    if device.type == "cuda" and world.is_distributed:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def data_parallel(model: nn.Module, device: torch.device, world: World, *, sync_batchnorm: bool) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when distributed, else ``model`` itself.

    ``sync_batchnorm``: first turn its BatchNorms into ``SyncBatchNorm`` (in place, as
    ``convert_sync_batchnorm`` does), so batch statistics span all processes.
    """
    if not world.is_distributed:
        return model
    wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_batchnorm else model
    return nn.parallel.DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)


def all_mean(values: Sequence[float], world: World) -> list[float]:
    """The mean of each value over all processes, in one all-reduce (float64).

    Flags travel as 0.0 / 1.0 among the values: a mean above 0 means some process raised
    it (how a stop request on any rank stops all of them at the same step).
    """
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if world.is_distributed:
        dist.all_reduce(tensor)
        tensor /= world.world_size
    return tensor.tolist()


def average_(tensors: Iterable[torch.Tensor], world: World) -> None:
    """Replace each tensor, in place, by its mean over all processes (one all-reduce each)."""
    if not world.is_distributed:
        return
    for tensor in tensors:
        dist.all_reduce(tensor)
        tensor /= world.world_size


def broadcast_flag(flag: bool, world: World) -> bool:
    """Rank 0's ``flag``, on every process."""
    if not world.is_distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0])
    dist.broadcast(tensor, 0)
    return bool(tensor.item())
