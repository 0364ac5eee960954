"""Scale-out under ``torchrun``: which share of the work this process does, and gathering results.

``torchrun --nproc-per-node P`` starts P copies of a command with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. :func:`join_world` reads them and, only when ``WORLD_SIZE`` > 1, joins the
process group (gloo on CPU, nccl on CUDA, one GPU per local rank). Work items (experts, evaluation
runs) are split round-robin with :meth:`World.shard`; each item draws its randomness from streams
derived from its own index, so the split does not change any result. Without ``torchrun`` the
world is one process and every method is a no-op.

Distillation splits one computation instead of work items: every rank holds the same state and
takes a contiguous share of each minibatch (:meth:`World.split`); partial sums are added up with
:meth:`World.sum` (in place) or :func:`sum_across` (differentiable: its backward adds up the
incoming gradients of every rank, as the gradient of a sum whose parts live on different ranks
must), and :meth:`World.agree` cheaply checks that the ranks still hold the same values.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist

from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice, OnEvent
from ddpp_cli.engine.faults import first_line

T = TypeVar("T")
TIMEOUT = timedelta(hours=24)  # ranks wait for each other at the end of long stages
# How long the ranks may take to find each other when the job starts (DDPP_RENDEZVOUS_TIMEOUT
# seconds overrides it), and after how long a waiting rank 0 says that it waits.
RENDEZVOUS_TIMEOUT = timedelta(minutes=10)
RENDEZVOUS_NOTICE_AFTER = 5.0
# What the env:// rendezvous needs beyond WORLD_SIZE (torchrun sets them all).
RENDEZVOUS_VARIABLES = ("RANK", "MASTER_ADDR", "MASTER_PORT")


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

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` (picklable), on every rank."""
        return self.gather(value)[0] if self.distributed else value

    def split(self, total: int) -> tuple[int, int]:
        """This rank's contiguous share [start, stop) of ``total`` items; the shares differ by
        at most one item (a rank gets none when ``total`` < ``size``)."""
        return self.rank * total // self.size, (self.rank + 1) * total // self.size

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` replaced in place by its sum over the ranks (not differentiable)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def agree(self, value: Any, what: str) -> None:
        """RuntimeError unless every rank passes an equal ``value`` (small, picklable): a bug
        check that the ranks' replicated state and random draws have not drifted apart."""
        if not self.distributed:
            return
        values = self.gather(value)
        if any(other != values[0] for other in values[1:]):
            raise RuntimeError(f"the ranks disagree on {what}: {values}")


class _SumAcross(torch.autograd.Function):
    """y = Σ_ranks x. Each rank's loss depends on y, so dL/dx on a rank is the sum over the
    ranks of their dL/dy: the backward is a sum across ranks too."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def sum_across(world: World, tensor: torch.Tensor) -> torch.Tensor:
    """Σ over the ranks of ``tensor``, differentiable (``tensor`` itself in one process).

    Under autograd every rank must run the backward through this sum (their graphs are the
    same), and each rank's downstream loss must be weighted so that the ranks' losses add up to
    the one objective (e.g. a loss replicated on every rank divided by ``world.size``).
    """
    if not world.distributed:
        return tensor
    return _SumAcross.apply(tensor)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DdppError(f"environment variable {name}={text!r} is not a whole number.") from None


def from_env() -> World:
    """The world from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (else one process);
    DdppError when ``WORLD_SIZE`` > 1 comes without what a rendezvous needs (torchrun's
    environment without torchrun, e.g. a variable left in a shell)."""
    size = _env_int("WORLD_SIZE", 1)
    missing = [name for name in RENDEZVOUS_VARIABLES if not os.environ.get(name, "").strip()]
    if size > 1 and missing:
        raise DdppError(
            f"WORLD_SIZE={size} is set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: that is part of torchrun's environment "
            "without torchrun. Unset WORLD_SIZE to run one process, or start ddpp with "
            f"'torchrun --nproc-per-node {size} $(which ddpp) …'."
        )
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


def join_world(device: torch.device, on_event: OnEvent | None = None) -> tuple[World, torch.device]:
    """This process's world and device; joins the process group when ``WORLD_SIZE`` > 1.

    The ranks must find each other within :func:`rendezvous_timeout` (DdppError naming who
    waited for whom, else); when that takes longer than a few seconds, rank 0 says once, through
    ``on_event`` (a :class:`Notice`), that it waits. After joining, collectives wait up to
    :data:`TIMEOUT`. The group is left at interpreter exit. Calling it again in a joined process
    only returns the world and device.
    """
    world = from_env()
    device = rank_device(world, device)
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        _rendezvous(world, "nccl" if device.type == "cuda" else "gloo", on_event)
        atexit.register(_leave)
    return world, device


def rendezvous_timeout() -> timedelta:
    """:data:`RENDEZVOUS_TIMEOUT`, or ``DDPP_RENDEZVOUS_TIMEOUT`` seconds when set."""
    seconds = _env_int("DDPP_RENDEZVOUS_TIMEOUT", int(RENDEZVOUS_TIMEOUT.total_seconds()))
    if seconds < 1:
        raise DdppError(f"DDPP_RENDEZVOUS_TIMEOUT must be at least 1 second (got {seconds}).")
    return timedelta(seconds=seconds)


def _rendezvous(world: World, backend: str, on_event: OnEvent | None) -> None:
    """Join the process group within the rendezvous timeout, then wait up to TIMEOUT."""
    limit = rendezvous_timeout()
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    waiting = f"{world.size} processes (WORLD_SIZE) at {where}"
    notice = threading.Timer(
        RENDEZVOUS_NOTICE_AFTER,
        lambda: on_event(
            Notice(f"waiting for {waiting}; giving up after {int(limit.total_seconds())} s.")
        ),
    )
    if on_event is not None and world.is_main:
        notice.daemon = True
        notice.start()
    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=limit)
    except (RuntimeError, ValueError) as exc:  # torch's DistStoreError is a RuntimeError
        raise DdppError(
            f"rank {world.rank} waited {int(limit.total_seconds())} s for {waiting} and not all "
            f"came ({first_line(exc)}); start every rank (torchrun --nproc-per-node "
            f"{world.size} …), or unset WORLD_SIZE to run one process."
        ) from None
    finally:
        notice.cancel()
    set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is not None:  # collectives then wait as long as a long stage may take
        set_timeout(TIMEOUT)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launched() -> bool:
    """Whether this process is one rank of a multi-process torchrun job (``WORLD_SIZE`` > 1)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")


def end_process(status: int) -> NoReturn:
    """End this torchrun rank now with ``status``: leave the process group, flush the output, and
    skip the interpreter's teardown (``os._exit``).

    With gloo (torch 2.14, CPU) about one rank in ten aborted at interpreter exit, after all its
    work was written ("terminate called without an active exception": a C++ thread destroyed
    while joinable), and torchrun then reported the whole job as failed. Leaving explicitly and
    exiting without the teardown never showed it (0 of 32 launches against 4 of 37).
    """
    try:
        _leave()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)
