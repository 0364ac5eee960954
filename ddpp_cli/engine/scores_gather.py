"""Gathering the accuracies the scores need, each from reused evaluation records when they
exist, else trained now, all under one protocol: the set three ways, random real images with
their lr picked from the grid (with and without DSA), and the whole training set."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import baselines, data, evaluate
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.distill.validation import MAX_VAL_SIZE, split_validation
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig, EvalResult
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.scores import (
    DEFAULT_GAMMA,
    DEFAULT_WEIGHT,
    LR_GRID,
    Accuracies,
    best_per_run,
    check_weight,
    compute_scores,
    get_convention,
    pick_lr,
)

NO_DSA = "none"


@dataclass(frozen=True)
class ScoreStarted:
    """An evaluation the scores need begins (its networks' events follow)."""

    label: str  # e.g. "herding: set_no_dsa", "random lr 0.01 (validation)"


@dataclass(frozen=True)
class ScoreFinished:
    label: str
    accuracy: float  # the mean, a fraction
    source: str  # Measured's: "reused record", "trained now", …


@dataclass(frozen=True)
class ScoresRequest:
    """``--scores`` with ``--score-weight`` (w of LRS) and ``--scores-convention``."""

    weight: float = DEFAULT_WEIGHT
    convention: str = "ddpp"
    gamma: float = DEFAULT_GAMMA

    def __post_init__(self) -> None:
        check_weight(self.weight)
        check_weight(self.gamma, "γ of ARS")
        get_convention(self.convention)


def source_text(result: EvalResult) -> str:
    """Where an evaluation's runs came from: records, this session, or both."""
    reused, runs = len(result.reused_runs), len(result.accuracies)
    if reused == runs:
        return "reused record"
    if reused == 0:
        return "trained now"
    return f"trained now ({reused} of {runs} runs reused from records)"


@dataclass(frozen=True)
class Measured:
    """One accuracy the scores use: its result and where it came from."""

    result: EvalResult
    dsa: bool
    labels: str
    records: Path | None
    source: str = ""
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.result
        source = self.source or source_text(r)
        return {
            "accuracy": r.mean, "std": r.std, "accuracies": list(r.accuracies),
            "lr": None if math.isnan(r.lr) else r.lr,  # None: each run's own (random_lr)
            "dsa": self.dsa, "labels": self.labels, "source": source,
            "records": None if self.records is None else str(self.records),
            **({} if self.note is None else {"note": self.note}),
        }  # fmt: skip


@dataclass(frozen=True)
class SetScores:
    """The scores of one set, the accuracies they came from and the random baseline's lr."""

    scores: dict[str, float]
    convention: str
    weight: float
    gamma: float
    measured: dict[str, Measured]
    random_lr: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        info = get_convention(self.convention)
        return {
            **self.scores,
            "convention": info.name,
            "convention_label": info.label,
            "unit": "percent" if info.scale == 100 else "fraction",
            "weight": self.weight,
            "gamma": self.gamma,
            "accuracies": {name: m.to_json() for name, m in self.measured.items()},
            "random_lr": self.random_lr,
        }


@dataclass(frozen=True)
class ScoreJob:
    """What the gathering needs besides the set: the protocol, where records go, the random
    pool (prepared as the set's data) and how to get the whole-set result."""

    config: EvalConfig
    set_records: Path | None
    random_records: Path | None
    baseline: baselines.Baseline
    full: Callable[[], Measured]
    test_subset: int | None = None
    data_root: Path | None = None
    download: bool = True
    zca_path: Path | None = None
    device: torch.device | str = "cpu"
    parallel: int = 1
    on_event: OnEvent | None = None
    label: str = ""  # before each evaluation's name in the events, e.g. "herding: "


def _emit(job: ScoreJob, event: object) -> None:
    if job.on_event is not None:
        job.on_event(event)


def _finished(job: ScoreJob, label: str, result: EvalResult, source: str = "") -> ScoreFinished:
    return ScoreFinished(f"{job.label}{label}", result.mean, source or source_text(result))


def announced(job: ScoreJob, label: str, evaluation: Callable[[], EvalResult]) -> EvalResult:
    """``evaluation()`` between a :class:`ScoreStarted` and a :class:`ScoreFinished` event."""
    _emit(job, ScoreStarted(f"{job.label}{label}"))
    result = evaluation()
    _emit(job, _finished(job, label, result))
    return result


def _set_result(distilled: DistilledSet, config: EvalConfig, job: ScoreJob, name: str) -> Measured:
    result = announced(job, name, lambda: evaluate.evaluate_set(
        distilled, config, data_root=job.data_root, download=job.download,
        zca_path=job.zca_path, test_subset=job.test_subset, device=job.device,
        on_event=job.on_event, parallel=job.parallel, records=job.set_records,
    ))  # fmt: skip
    return Measured(result, config.dsa_strategy != NO_DSA, config.labels, job.set_records)


def validation_baseline(baseline: baselines.Baseline, seed: int) -> baselines.Baseline:
    """``baseline`` whose pool holds out a stratified validation split (10 % of the pool, at
    most 5000, at least one per class), which replaces its test split."""
    pool = baseline.train
    size = max(pool.num_classes, min(MAX_VAL_SIZE, round(0.1 * len(pool))))
    keep, held = split_validation(
        pool.labels, pool.num_classes, size, make_generator(seed, "scores", "validation")
    )
    train = data.ImageSplit(pool.images[keep], pool.labels[keep], pool.class_names)
    smallest = int(torch.bincount(train.labels, minlength=train.num_classes).min())
    if baseline.config.ipc > smallest:
        raise DdppError(
            f"--ipc {baseline.config.ipc} leaves no random baseline once {size} pool images "
            "are held out to pick its lr; use a larger --train-subset or "
            "--scores-convention ddranking."
        )
    return replace(
        baseline, train=train, test_images=pool.images[held], test_labels=pool.labels[held],
        _cache={}, _selection={},
    )  # fmt: skip


def _random_result(
    baseline: baselines.Baseline, config: EvalConfig, job: ScoreJob, label: str
) -> EvalResult:
    """Random real images of ``baseline`` under ``config`` (its lr set), in the records."""

    def evaluation() -> EvalResult:
        result, _ = baselines.evaluate_baseline(
            baseline, config, device=job.device, on_event=job.on_event, parallel=job.parallel,
            records=job.random_records,
        )  # fmt: skip
        return result

    return announced(job, label, evaluation)


def _random_grid(
    baseline: baselines.Baseline, config: EvalConfig, job: ScoreJob, split: str
) -> dict[float, EvalResult]:
    """The random baseline at every lr of the grid."""
    dsa = "" if config.dsa_strategy != NO_DSA else ", no DSA"
    return {
        lr: _random_result(
            baseline, replace(config, lr=lr), job, f"random lr {lr:g} ({split}{dsa})"
        )
        for lr in LR_GRID
    }


def random_accuracy(
    config: EvalConfig, job: ScoreJob, picked_on: str
) -> tuple[Measured, dict[str, Any]]:
    """Random real images under ``config`` with the grid's lr: picked on the mean accuracy of a
    validation split, then tested once (``picked_on`` "validation"), or each run's best test
    accuracy over the grid ("test", DD-Ranking's search)."""
    dsa = config.dsa_strategy != NO_DSA
    if picked_on == "test":
        grid = _random_grid(job.baseline, config, job, "test")
        per_run = best_per_run({lr: r.accuracies for lr, r in grid.items()})
        picks = [max(grid, key=lambda lr, r=r: grid[lr].accuracies[r]) for r in range(len(per_run))]
        first = grid[LR_GRID[0]]
        mean, std = evaluate.summarize(per_run)
        reused = all(len(r.reused_runs) == len(r.accuracies) for r in grid.values())
        result = replace(first, accuracies=per_run, mean=mean, std=std, lr=float("nan"),
                         reused_runs=list(range(len(per_run))) if reused else [])  # fmt: skip
        lr_info = {"picked_on": "test", "per_run_lr": picks,
                   "grid": {str(lr): r.mean for lr, r in grid.items()}}  # fmt: skip
        note = "each run's best test accuracy over the lr grid (DD-Ranking's convention)"
        return Measured(result, dsa, "hard", job.random_records, note=note), lr_info
    held_out = validation_baseline(job.baseline, config.seed)
    grid = _random_grid(held_out, config, job, "validation")
    lr = pick_lr({lr: r.accuracies for lr, r in grid.items()})
    name = "random" if dsa else "random_no_dsa"
    result = _random_result(job.baseline, replace(config, lr=lr), job, f"{name} (lr {lr:g})")
    lr_info = {"picked_on": "validation", "lr": lr, "validation_size": len(held_out.test_labels),
               "grid": {str(g): r.mean for g, r in grid.items()}}  # fmt: skip
    return Measured(result, dsa, "hard", job.random_records), lr_info


def score_set(distilled: DistilledSet, job: ScoreJob, request: ScoresRequest) -> SetScores:
    """The scores of ``distilled`` under ``job.config`` (its DSA setting is the "with
    augmentation" one; DSA off is the other), every accuracy kept in records."""
    convention = get_convention(request.convention)
    config = job.config
    plain = replace(config, dsa_strategy=NO_DSA)
    measured = {
        "set": _set_result(distilled, config, job, "set"),
        "set_hard": _set_result(distilled, replace(config, labels="hard"), job, "set_hard"),
        "set_no_dsa": _set_result(distilled, plain, job, "set_no_dsa"),
    }
    measured["random"], lr_dsa = random_accuracy(config, job, convention.lr_picked_on)
    measured["random_no_dsa"], lr_plain = random_accuracy(plain, job, convention.lr_picked_on)
    _emit(job, ScoreStarted(f"{job.label}full"))
    measured["full"] = job.full()
    full = measured["full"]
    _emit(job, _finished(job, "full", full.result, full.source))
    accuracies = Accuracies(
        full=measured["full"].result.accuracies,
        set_labels=measured["set"].result.accuracies,
        set_hard=measured["set_hard"].result.accuracies,
        set_no_dsa=measured["set_no_dsa"].result.accuracies,
        random=measured["random"].result.accuracies,
        random_no_dsa=measured["random_no_dsa"].result.accuracies,
    )
    scores = compute_scores(accuracies, convention, request.weight, request.gamma)
    return SetScores(
        scores, convention.name, request.weight, request.gamma, measured,
        {"dsa": lr_dsa, "no_dsa": lr_plain},
    )  # fmt: skip
