"""The runs of one evaluation: every run's network trained and tested (resumed from the
records, batched, split between torchrun ranks), summed up as an :class:`EvalResult`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ddpp_cli import __version__
from ddpp_cli.engine import batched, models
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.evaluate.events import NetworkFinished, NetworkStarted
from ddpp_cli.engine.evaluate.parallel import _gather_runs, _train_group
from ddpp_cli.engine.evaluate.protocol import (
    EvalConfig,
    EvalResult,
    SetForRun,
    _check_images,
    _check_vectors,
    chosen_vectors,
    protocol_record,
    resolve_lr,
    summarize,
)
from ddpp_cli.engine.evaluate.records import EvalRecords, FinishedRuns, evaluation_identity
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.training import LabelVectors


def evaluate_per_run(
    set_for_run: SetForRun,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    config: EvalConfig,
    lr: float | None = None,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    parallel: int = 1,
    world: World | None = None,
    records: Path | None = None,
    vectors: LabelVectors | None = None,
) -> EvalResult:
    """:func:`evaluate_images` where run ``r`` trains on ``set_for_run(r)`` (e.g. a new random
    subset per run, so that the std covers the choice of subset as in the DC benchmark).

    ``vectors``: label vectors of every run's set (one row per image), used as ``config.labels``
    says (:func:`chosen_vectors`); the result's protocol names the labels used.

    ``parallel`` runs train at once as one batched model; under torchrun (``world``) each rank
    trains its share of the runs and every rank returns the whole result.

    ``records`` (a folder, e.g. :func:`default_records_dir`): every finished run is written
    there at once (a batch of ``parallel`` runs together), and runs found there for the same
    :func:`evaluation_identity` are taken instead of trained again, so a rerun after a kill
    continues with the first missing run and returns what an uninterrupted evaluation would.
    """
    emit = on_event or (lambda event: None)
    parallel = batched.check_parallel(parallel)
    world = world or World()
    device = torch.device(device)
    effective_lr, lr_source = resolve_lr(config, lr)
    vectors = chosen_vectors(config, vectors)
    test_x, test_y = test_images.to(device), test_labels.to(device)
    started = time.perf_counter()
    book, done = None, {}
    if records is not None:
        identity = evaluation_identity(
            set_for_run(0), test_images, test_labels, num_classes=num_classes, config=config,
            lr=effective_lr, vectors=vectors,
        )  # fmt: skip
        book = EvalRecords.open(records, identity)
        done = _recorded_runs(book, config, emit)
    reused = {run: book.runs[run] for run in done} if book is not None else {}

    def keep(runs: Sequence[int]) -> None:
        if book is not None and world.is_main:
            _record(book, done, runs, device, parallel)

    missing = [run for run in range(config.runs) if run not in done]
    for group in batched.groups(world.shard(missing), parallel):
        sets = [set_for_run(run) for run in group]
        for images, labels in sets:
            _check_images(images, labels, test_images, test_labels, num_classes)
            _check_vectors(vectors, int(images.shape[0]), num_classes)
        for run in group:
            emit(NetworkStarted(config.arch, run, config.runs, config.epochs))
        group_started = time.perf_counter()
        outcomes = _train_group(
            group, sets, test_x, test_y, num_classes=num_classes, lr=effective_lr,
            config=config, device=device, emit=emit, vectors=vectors,
        )  # fmt: skip
        seconds = (time.perf_counter() - group_started) / len(group)
        for run, (images, _), (acc, bad) in zip(group, sets, outcomes, strict=True):
            done[run] = (acc, bad, int(images.shape[0]), seconds)
        keep(group)  # the runs of a batch are recorded together
        for run in group:
            accuracy, diverged = done[run][0], done[run][1]
            emit(NetworkFinished(config.arch, run, config.runs, accuracy, seconds, diverged))
    if world.distributed:
        keep(_gather_runs(world, done, config, emit))
    result = _per_run_result(
        config, done, effective_lr, lr_source, test_images, num_classes, device,
        time.perf_counter() - started, vectors,
    )  # fmt: skip
    return replace(
        result, reused_runs=sorted(reused), made_elsewhere=made_elsewhere(reused, device)
    )


def made_elsewhere(reused: dict[int, dict], device: torch.device) -> list[dict[str, object]]:
    """The reused runs whose record was made by another ddpp or torch version or on another
    device than this evaluation's (a record from before ddpp kept these: "unknown")."""
    now = {"ddpp": __version__, "torch": torch.__version__, "device": str(device)}
    elsewhere = []
    for run in sorted(reused):
        entry = reused[run]
        made = {
            "ddpp": entry.get("ddpp_version", "unknown"),
            "torch": entry.get("torch_version", "unknown"),
            "device": entry.get("device", "unknown"),
        }
        if made != now:
            elsewhere.append({"run": run, **made})
    return elsewhere


def _recorded_runs(book: EvalRecords, config: EvalConfig, emit: OnEvent) -> FinishedRuns:
    """The runs ``book`` already holds (each announced as a resumed NetworkFinished)."""
    done: FinishedRuns = {}
    for run in range(config.runs):
        if run in book.runs:
            entry = book.runs[run]
            done[run] = (entry["accuracy"], entry["diverged"], entry["train_size"], 0.0)
            emit(
                NetworkFinished(
                    config.arch, run, config.runs, entry["accuracy"], 0.0, entry["diverged"],
                    resumed=True,
                )
            )  # fmt: skip
    return done


def _record(
    book: EvalRecords, done: FinishedRuns, runs: Sequence[int], device: torch.device, parallel: int
) -> None:
    """Add ``runs`` (finished, in ``done``) to the records and write them at once."""
    for run in runs:
        acc, bad, size, seconds = done[run]
        book.runs[run] = {
            "accuracy": acc, "diverged": bad, "train_size": size, "seconds": seconds,
            "device": str(device), "parallel": parallel, "ddpp_version": __version__,
            "torch_version": torch.__version__,
        }  # fmt: skip
    book.save()


def _per_run_result(
    config: EvalConfig, done: FinishedRuns, lr: float, lr_source: str, test_images: torch.Tensor,
    num_classes: int, device: torch.device, seconds: float, vectors: LabelVectors | None,
) -> EvalResult:  # fmt: skip
    """Every run's accuracy with mean ± std and the protocol followed."""
    accuracies = [done[run][0] for run in range(config.runs)]
    diverged = [run for run in range(config.runs) if done[run][1]]
    sizes = [done[run][2] for run in range(config.runs)]
    mean, std = summarize(accuracies)
    record = protocol_record(config, lr, lr_source, vectors)
    record.update(
        train_size=sizes[0] if len(set(sizes)) == 1 else sizes,
        test_size=int(test_images.shape[0]),
        image_shape=list(test_images.shape[1:]),
        num_classes=num_classes,
        diverged_runs=diverged,
        device=str(device),
        parameters=models.parameter_count(
            config.arch, int(test_images.shape[1]), num_classes, tuple(test_images.shape[2:])
        ),
    )
    return EvalResult(
        arch=config.arch, accuracies=accuracies, mean=mean, std=std, seconds=seconds, lr=lr,
        protocol=record,
    )  # fmt: skip


def evaluate_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    config: EvalConfig,
    lr: float | None = None,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    parallel: int = 1,
    world: World | None = None,
    records: Path | None = None,
    vectors: LabelVectors | None = None,
) -> EvalResult:
    """Run the protocol ``config.runs`` times on one set of (model-input space) images.

    ``test_images`` must already be transformed like ``images``. The learning rate is
    ``config.lr`` when given, else ``lr`` (the set's learned one), else 0.01. ``parallel``,
    ``world``, ``records`` and ``vectors`` (the images' label vectors) as in
    :func:`evaluate_per_run`.
    """
    return evaluate_per_run(
        lambda run: (images, labels), test_images, test_labels, num_classes=num_classes,
        config=config, lr=lr, device=device, on_event=on_event, parallel=parallel, world=world,
        records=records, vectors=vectors,
    )  # fmt: skip
