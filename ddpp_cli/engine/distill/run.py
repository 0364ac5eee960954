"""The distillation loop (:func:`distill`): set up, then iterate — step, guard, log, validate,
snapshot, checkpoint — and finally test the chosen set once and write ``summary.json``."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import torch

from ddpp_cli import __version__
from ddpp_cli.engine import allocator, autolr
from ddpp_cli.engine.buffer import read_manifest
from ddpp_cli.engine.distill.buffer import find_buffer
from ddpp_cli.engine.distill.config import DistillConfig, not_applicable
from ddpp_cli.engine.distill.events import (
    CheckpointSaved,
    DistillStarted,
    DistillSummary,
    DivergedError,
    IterationFinished,
    ValidationFinished,
)
from ddpp_cli.engine.distill.files import (
    TEST_RESULT_KEY,
    RunFolder,
    check_startable,
    checkpoint_metadata,
    read_checkpoint,
)
from ddpp_cli.engine.distill.methods import get_method
from ddpp_cli.engine.distill.methods.registry import Step
from ddpp_cli.engine.distill.resolution import resume_config
from ddpp_cli.engine.distill.setup import RunSetup, set_up, set_up_method
from ddpp_cli.engine.distill.state import DistillState, StateDict
from ddpp_cli.engine.distill.step import divergence
from ddpp_cli.engine.distill.validation import Validation, final_test
from ddpp_cli.engine.distilled import load as load_set
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalResult
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.faults import StageFailed
from ddpp_cli.engine.layout import CHECKPOINT_NAME, MANIFEST_NAME
from ddpp_cli.engine.model_selection import get_selection


def distill(
    config: DistillConfig,
    folder: Path,
    *,
    buffer: Path | None = None,
    data_root: Path | None = None,
    download: bool = True,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    world: World | None = None,
) -> DistillSummary:
    """Run (or resume, when ``folder`` holds a checkpoint) a distillation into ``folder``.

    Under torchrun (``world``) every rank calls this alike: the ranks share each minibatch
    (docs/parallel.md), rank 0 alone writes files.

    Raises DdppError on bad input, :class:`DivergedError` when the run diverges (after saving
    the last good set), and re-raises KeyboardInterrupt after writing a checkpoint. Any other
    exception that stops an iteration (out of memory, a full disk, a bug) comes out as
    :class:`~ddpp_cli.engine.faults.StageFailed` from it, once the last complete state is
    checkpointed (or, after a failed write, the checkpoint on disk is known intact).
    """
    emit = on_event or (lambda event: None)
    device = torch.device(device)
    folder = Path(folder)
    resuming = (folder / CHECKPOINT_NAME).is_file()
    if resuming:
        config = resume_config(folder, config)
    else:
        check_startable(folder)
    info = get_method(config.method)
    if info.needs_buffer:
        buffer = _resume_buffer(folder, buffer) if resuming else buffer
        setup = set_up(
            config, find_buffer(config, buffer), data_root=data_root, download=download,
            device=device, emit=emit, world=world,
        )  # fmt: skip
    else:  # no buffer: the method draws from the real training images
        if buffer is not None:
            raise not_applicable("buffer", config.method)
        setup = set_up_method(
            config, data_root=data_root, download=download, device=device, world=world
        )
    setup.world.barrier()  # every rank has seen whether the folder held a checkpoint
    derived: dict[str, str] = {}
    if not resuming and info.learns_step_size:  # open step sizes (no paper row, --auto-lr)
        setup, derived = autolr.calibrate(setup)
    files = RunFolder(
        folder, setup.as_set, *setup.checkpoint_contents(), writes=setup.world.is_main
    )
    files.create()
    if resuming:
        saved, _ = read_checkpoint(files.checkpoint)
        state = setup.restored_state(saved, files.checkpoint)
        files.saved_iteration = state.iteration
        files.truncate(state.iteration)
        files.restore_best(saved)
    else:
        state = setup.fresh_state()
        if setup.config.snapshot_every > 0:  # the initial images: the animation's first frame
            files.save_image_snapshot(state.images, state.learned_lr, 0)
    emit(_started(setup, folder, state, resumed=resuming, derived=derived))
    with allocator.freed_memory_kept():  # each iteration reuses the last one's memory
        _loop(setup, files, state, emit)
    return _finish(setup, files, state, emit)


def _resume_buffer(folder: Path, buffer: Path | None) -> Path | None:
    """The buffer to resume with: ``buffer``, else the checkpoint's; DdppError when it was made
    with other settings than the run's."""
    meta = checkpoint_metadata(folder / CHECKPOINT_NAME)
    if buffer is None and meta.get("buffer"):
        buffer = Path(meta["buffer"])
    if (
        buffer is not None
        and meta.get("buffer_config") is not None
        and (Path(buffer) / MANIFEST_NAME).is_file()
        and read_manifest(Path(buffer)).config != meta["buffer_config"]
    ):
        raise DdppError(
            f"the buffer at {buffer} was made with other settings than the one this run "
            "started from; resume with the original buffer (--buffer)."
        )
    return buffer


def _started(
    setup: RunSetup, folder: Path, state: DistillState, resumed: bool, derived: dict[str, str]
) -> DistillStarted:
    return DistillStarted(
        folder=folder, config=setup.config, buffer=setup.buffer,
        experts=len(setup.expert_paths),
        buffer_epochs=setup.buffer_epochs if setup.buffer is not None else 0,
        num_params=setup.layout.numel, train_size=len(setup.train_idx),
        val_size=len(setup.val_idx), test_size=len(setup.prepared.test.labels),
        preprocessing=setup.preprocessing["kind"], start_iteration=state.iteration,
        resumed=resumed, device=str(setup.device), derived=derived,
    )  # fmt: skip


def _loop(setup: RunSetup, files: RunFolder, state: DistillState, emit: OnEvent) -> None:
    """Iterate until ``iterations``. An iteration is complete once its metrics line is written;
    whatever else stops the next one (Ctrl-C, out of memory, a CUDA error, a bug) checkpoints
    the last complete state, unless a write failed (:meth:`_Loop.keep`)."""
    loop = _Loop(setup, files, state, emit)
    last_good = state.state_dict()  # the state after the last complete iteration
    try:
        if state.iteration == 0:
            loop.initial_validation()  # redone on resume from iteration 0
            last_good = state.state_dict()
        while state.iteration < setup.config.iterations:
            started = time.perf_counter()
            record = {"iteration": state.iteration + 1, **loop.matching.step(state)}
            problem = divergence(record["loss"], state)
            if problem is not None:
                loop.stop_diverged(problem, record, last_good)
            state.iteration += 1
            if state.lr is not None:
                record["lr"] = state.learned_lr
            loop.report(record, time.perf_counter() - started)
            new_best = loop.validate(record) if loop.validation.due(state.iteration) else None
            loop.log(record, started)
            last_good = state.state_dict()
            loop.save_due_files(last_good, new_best)
    except DdppError:  # a diverged run keeps its own set; the checkpoint stays as saved
        raise
    except KeyboardInterrupt:
        loop.checkpoint(last_good)
        raise
    except Exception as exc:
        loop.keep(last_good, exc)


class _Loop:
    """The pieces the loop uses: the step, validation, the files and the event callback."""

    def __init__(
        self, setup: RunSetup, files: RunFolder, state: DistillState, emit: OnEvent
    ) -> None:
        self.config = setup.config
        self.files = files
        self.state = state
        self.emit = emit
        self.labels = setup.labels
        self.vectors = setup.label_vectors  # label vectors validate with their own loss
        self.matching: Step = get_method(setup.config.method).step(setup)
        self.rule = get_selection(setup.config.selection)
        train, test = setup.prepared.train, setup.prepared.test
        chosen_on = (
            (test.images, test.labels)
            if self.rule.chosen_on == "test"  # best-test: MTT's convention
            else (train.images[setup.val_idx], train.labels[setup.val_idx])
        )
        self.validation = Validation(
            setup.config, *chosen_on, setup.prepared.num_classes, setup.device, emit,
            setup.world, purpose=self.rule.seed_purpose,
        )  # fmt: skip

    def validate(self, record: dict[str, Any]) -> tuple[float, float] | None:
        """Validate the current images (best-test: test them); (accuracy, std) when they beat
        the best so far (then the state's best is this iteration), else None."""
        state, iteration, rule = self.state, self.state.iteration, self.rule
        lr = state.learned_lr  # None: the evaluation's default, as for a coreset
        self.validation.last = None
        vectors = self.vectors(state.targets)  # None: the hard labels, the call as before
        soft = {} if vectors is None else {"vectors": vectors}
        accuracy, std = self.validation(state.images.detach(), self.labels, lr, iteration, **soft)
        improved = state.best.improved_by(accuracy)
        if improved:
            state.best.iteration, state.best.accuracy = iteration, accuracy
        record.update({rule.accuracy_key: accuracy, rule.std_key: std})
        result = self.validation.last
        if rule.chosen_on == "test" and result is not None:  # the summary reports the best one
            logged = replace(result, selection=rule.label).to_json()  # its time is the line's
            record[TEST_RESULT_KEY] = {k: v for k, v in logged.items() if k != "seconds"}
        best = state.best
        self.emit(ValidationFinished(iteration, accuracy, std, best.iteration, best.accuracy))
        return (accuracy, std) if improved else None

    def initial_validation(self) -> None:
        """Iteration 0: validate the initial images, log them and write the first checkpoint."""
        started = time.perf_counter()
        record: dict[str, Any] = {"iteration": 0}
        if self.state.lr is not None:
            record["lr"] = self.state.learned_lr
        new_best = self.validate(record) if self.config.eval_every > 0 else None
        record["seconds"] = time.perf_counter() - started
        self.files.log(record)
        self.save_checkpoint_and_best(self.state.state_dict(), new_best)

    def report(self, record: dict[str, Any], seconds: float) -> None:
        shared = ("iteration", "loss", "pruned_fraction", "lr", "start_epoch", "expert")
        self.emit(
            IterationFinished(
                record["iteration"], self.config.iterations, record["loss"],
                record.get("pruned_fraction"), record.get("lr"), record.get("start_epoch"),
                record.get("expert"), seconds, method=self.config.method,
                details={k: v for k, v in record.items() if k not in shared},
            )
        )  # fmt: skip

    def log(self, record: dict[str, Any], started: float) -> None:
        """Add the iteration's seconds (and the run's total) to ``record``; append it."""
        record["seconds"] = time.perf_counter() - started
        self.state.elapsed += record["seconds"]
        record["elapsed"] = self.state.elapsed
        self.files.log(record)

    def save_due_files(self, saved: StateDict, new_best: tuple[float, float] | None) -> None:
        """The image snapshot, the checkpoint and the best set, when the iteration of
        ``saved`` (the current state) is due for them or found a new best."""
        c = self.config
        if c.snapshot_every > 0 and saved.iteration % c.snapshot_every == 0:
            self.files.save_image_snapshot(saved.images, saved.lr, saved.iteration)
        if (
            saved.iteration % c.checkpoint_every == 0
            or saved.iteration == c.iterations
            or new_best is not None
        ):
            self.save_checkpoint_and_best(saved, new_best)

    def save_checkpoint_and_best(
        self, saved: StateDict, new_best: tuple[float, float] | None
    ) -> None:
        """The checkpoint of ``saved``, then (at a new best) the best set: the best set is never
        newer than the checkpoint that produced it."""
        self.checkpoint(saved)
        if new_best is not None:
            self.files.save_best(saved, *new_best)

    def checkpoint(self, saved: StateDict) -> None:
        self.files.save_checkpoint(saved)
        self.emit(CheckpointSaved(saved.iteration, self.files.checkpoint))

    def keep(self, last_good: StateDict, exc: Exception) -> NoReturn:
        """After ``exc`` stopped an iteration: checkpoint ``last_good`` unless a write failed
        (then the checkpoint on disk, written atomically, is intact), and raise
        :class:`~ddpp_cli.engine.faults.StageFailed` from ``exc`` saying which iteration it
        holds; ``exc`` itself when there is no checkpoint to continue from."""
        files, failed_too = self.files, ""
        if not files.write_failed:
            try:
                self.checkpoint(last_good)
            except Exception as second:  # the disk is full as well, say
                failed_too = f"; saving iteration {last_good.iteration} failed too ({second})"
        if files.saved_iteration is None:
            raise exc
        if files.saved_iteration == last_good.iteration and not failed_too:
            kept = f"the last complete state (iteration {last_good.iteration}) is in "
        else:
            kept = f"the last checkpoint (iteration {files.saved_iteration}) is intact in "
        raise StageFailed("distill", f"{kept}{files.checkpoint}{failed_too}", files.folder) from exc

    def stop_diverged(self, problem: str, record: dict[str, Any], last_good: StateDict) -> NoReturn:
        """Save the last good set, log the failed iteration and raise :class:`DivergedError`."""
        iteration = record["iteration"]
        path = self.files.save_diverged(last_good, iteration)
        lr = self.state.learned_lr
        self.files.log({**record, **({} if lr is None else {"lr": lr}), "diverged": problem})
        where, advice = get_method(self.config.method).divergence(self.config, record, lr)
        raise DivergedError(
            f"{problem} at iteration {iteration} ({where}); the run diverged. The last good "
            f"set (iteration {last_good.iteration}) is in {path}. " + advice,
            iteration=iteration,
            distilled=path,
            metrics=self.files.metrics,
        )


def _finish(
    setup: RunSetup, files: RunFolder, state: DistillState, emit: OnEvent
) -> DistillSummary:
    """Test the best set (or the final one) once and write ``summary.json``; with
    ``--selection best-test`` the figure is the best evaluation point's own test (MTT's)."""
    config = setup.config
    setup.world.barrier()  # rank 0 has written the files the other ranks read now
    best = files.best if state.best.iteration is not None and files.best.is_file() else None
    tested = best or files.distilled
    test: EvalResult | None = None
    rule = get_selection(config.selection)
    logged = None
    if rule.chosen_on == "test" and best is not None:
        logged = files.best_test_result(state.best.iteration)
    if logged is not None:
        test = logged
    elif config.test_runs > 0:
        previous = files.previous_summary()
        same_end = previous is not None and (
            previous.get("iterations"),
            previous.get("best_iteration"),
        ) == (state.iteration, state.best.iteration)
        test = final_test(
            config, tested, setup.prepared.test.images, setup.prepared.test.labels,
            num_classes=setup.prepared.num_classes, device=setup.device, emit=emit,
            previous=previous if same_end else None, world=setup.world,
        )  # fmt: skip
        test = replace(test, selection=rule.label)
    by_validation = rule.chosen_on == "val"
    summary = DistillSummary(
        folder=files.folder, distilled=files.distilled, best=best, checkpoint=files.checkpoint,
        metrics=files.metrics, summary=files.summary, iterations=state.iteration,
        final_lr=state.learned_lr, best_iteration=state.best.iteration,
        best_val_accuracy=state.best.accuracy if by_validation else None,
        tested=tested if test is not None else None, test=test,
        pruned_fraction=files.pruned_stats(), seconds=state.elapsed, method=config.method,
        selection=rule.name, labels=load_set(files.distilled).label_text,
    )  # fmt: skip
    files.write_summary(summary_json(summary))
    return summary


def summary_json(summary: DistillSummary) -> dict[str, Any]:
    """The JSON form of a summary (``summary.json`` and ``ddpp distill --json``)."""
    return {
        "folder": str(summary.folder),
        "distilled": str(summary.distilled),
        "best": None if summary.best is None else str(summary.best),
        "checkpoint": str(summary.checkpoint),
        "metrics": str(summary.metrics),
        "iterations": summary.iterations,
        "final_lr": summary.final_lr,
        "best_iteration": summary.best_iteration,
        "best_val_accuracy": summary.best_val_accuracy,
        "tested": None if summary.tested is None else str(summary.tested),
        "test": None if summary.test is None else summary.test.to_json(),
        "pruned_fraction": summary.pruned_fraction,
        "seconds": summary.seconds,
        "method": summary.method,
        "selection": get_selection(summary.selection).label,
        "labels": summary.labels,
        "ddpp_version": __version__,
    }
