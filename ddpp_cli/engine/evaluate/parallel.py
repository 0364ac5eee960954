"""Several networks at once: the runs of a group trained as one batched model (``--parallel
K``, :mod:`batched`) or one at a time, and under torchrun the runs the other ranks trained."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from ddpp_cli.engine import augment, batched
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.evaluate.events import NetworkEpochFinished, NetworkFinished
from ddpp_cli.engine.evaluate.protocol import (
    EvalConfig,
    _decay_lr,
    _run_generator,
    _run_network,
    _run_optimizer,
    _train_and_test,
)
from ddpp_cli.engine.evaluate.records import FinishedRuns
from ddpp_cli.engine.events import Notice, OnEvent
from ddpp_cli.engine.training import LabelVectors


def _train_and_test_group(
    sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    arch: str,
    num_classes: int,
    lr: float,
    config: EvalConfig,
    runs: Sequence[int],
    device: torch.device,
    on_epoch: Callable[[int, int, int], None] | None,
    vectors: LabelVectors | None = None,
) -> list[tuple[float, bool]]:
    """:func:`_train_and_test` for runs ``runs`` (run ``runs[k]`` on ``sets[k]``) at once.

    A run whose loss becomes non-finite is tested with its parameters from that epoch, as the
    sequential loop does; the others train on.
    """
    stacked = batched.StackedNetworks(
        [_run_network(config, arch, run, sets[0][0], num_classes).to(device) for run in runs]
    )
    generators = [_run_generator(config, arch, run) for run in runs]
    dsa = augment.DSA(config.dsa_strategy)
    optimizer = _run_optimizer(config, stacked.parameters(), lr)
    on_device = [(x.to(device), y.to(device)) for x, y in sets]
    vectors_on_device = None if vectors is None else vectors.to(device)
    stopped: dict[int, dict[str, torch.Tensor]] = {}  # member -> state when it diverged
    for epoch in range(1, config.epochs + 1):
        losses = batched.train_epoch(
            stacked, on_device, optimizer, batch_size=config.batch_size, dsa=dsa,
            generators=generators, vectors=vectors_on_device,
        )  # fmt: skip
        for k, run in enumerate(runs):
            if k in stopped:
                continue
            if on_epoch is not None:
                on_epoch(run, epoch, config.epochs)
            if not math.isfinite(losses[k]):
                stopped[k] = stacked.member_state(k)
        if len(stopped) == len(runs):
            break
        _decay_lr(config, optimizer, lr, epoch)
    for k, state in stopped.items():
        stacked.load_member_state(k, state)
    predicted = stacked.predict(test_images.to(device))
    correct = (predicted == test_labels.to(device)).sum(dim=1).tolist()
    total = int(test_labels.shape[0])
    return [(int(c) / total, k in stopped) for k, c in enumerate(correct)]


def _train_group(
    group: Sequence[int], sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    test_x: torch.Tensor, test_y: torch.Tensor, *, num_classes: int, lr: float,
    config: EvalConfig, device: torch.device, emit: OnEvent, vectors: LabelVectors | None = None,
) -> list[tuple[float, bool]]:  # fmt: skip
    """(accuracy, diverged) of each run of ``group``: as one batched model, or one at a time
    when there is one run or the runs' sets differ in size; ``vectors``: the label vectors
    every run trains with (None: cross-entropy on the hard labels)."""

    def on_epoch(run: int, epoch: int, epochs: int) -> None:
        emit(NetworkEpochFinished(config.arch, run, epoch, epochs))

    sizes = [int(images.shape[0]) for images, _ in sets]
    if len(group) > 1 and len(set(sizes)) > 1:
        emit(Notice(f"runs {group} train on sets of different sizes; one at a time instead."))
    if len(group) > 1 and len(set(sizes)) == 1:
        return _train_and_test_group(
            sets, test_x, test_y, arch=config.arch, num_classes=num_classes, lr=lr,
            config=config, runs=group, device=device, on_epoch=on_epoch, vectors=vectors,
        )  # fmt: skip
    return [
        _train_and_test(
            images, labels, test_x, test_y, arch=config.arch, num_classes=num_classes, lr=lr,
            config=config, run=run, device=device, on_epoch=functools.partial(on_epoch, run),
            vectors=vectors,
        )
        for run, (images, labels) in zip(group, sets, strict=True)
    ]  # fmt: skip


def _gather_runs(world: World, done: FinishedRuns, config: EvalConfig, emit: OnEvent) -> list[int]:
    """Under torchrun: add the runs the other ranks trained to ``done``; returns them."""
    mine = set(done)
    others = []
    for part in world.gather(done):
        for run, (acc, bad, size, seconds) in part.items():
            if run not in mine:  # trained by another rank
                done[run] = (acc, bad, size, seconds)
                others.append(run)
                emit(NetworkFinished(config.arch, run, config.runs, acc, seconds, bad))
    return others
