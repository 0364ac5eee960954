"""Scale-out under ``torchrun``: which share of the work this process does, and gathering results.

``torchrun --nproc-per-node P`` starts P copies of a command with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. :func:`join_world` reads them and, only when ``WORLD_SIZE`` > 1, joins the
process group (gloo on CPU, nccl on CUDA, one GPU per local rank). Work items (experts, evaluation
runs) are split round-robin with :meth:`World.shard`; each item draws its randomness from streams
derived from its own index, so the split does not change any result. Without ``torchrun`` the
world is one process and every method is a no-op.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ddpp_cli.engine.errors import DdppError

T = TypeVar("T")
TIMEOUT = timedelta(hours=24)  # ranks wait for each other at the end of long stages


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes of a run (rank 0 is the main one)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``size``-th one, starting at ``rank``."""
        return list(items[self.rank :: self.size])

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DdppError(f"environment variable {name}={text!r} is not a whole number.") from None


def from_env() -> World:
    """The world from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (else one process)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size:
        raise DdppError(f"RANK={rank} and WORLD_SIZE={size} do not describe a valid torchrun job.")
    return World(rank=rank, size=size, local_rank=local_rank)


def rank_device(world: World, device: torch.device) -> torch.device:
    """One GPU per local rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if world.distributed and device.type == "cuda" and device.index is None:
        if world.local_rank >= torch.cuda.device_count():
            raise DdppError(
                f"local rank {world.local_rank} has no GPU of its own (this machine has "
                f"{torch.cuda.device_count()}); start at most that many processes per node."
            )
        return torch.device("cuda", world.local_rank)
    return device


def join_world(device: torch.device) -> tuple[World, torch.device]:
    """This process's world and device; joins the process group when ``WORLD_SIZE`` > 1.

    The group is left at interpreter exit. Calling it again in a joined process only returns the
    world and device.
    """
    world = from_env()
    device = rank_device(world, device)
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)
        atexit.register(_leave)
    return world, device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
