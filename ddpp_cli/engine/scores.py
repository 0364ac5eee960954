"""DD-Ranking's scores of a distilled set (HLR, IOR, LRS, ARS): the formulas, pure, and the
conventions they are computed under (:data:`CONVENTIONS`), docs/evaluation.md "Scores".

HLR = Acc(whole training set, hard) − Acc(set, hard); IOR = Acc(set) − Acc(random real);
LRS = (e^α − e^−1) / (e − e^−1) with α = w·IOR − (1 − w)·HLR; ARS the same form over
β = γ·(set − random, with DSA) + (1 − γ)·(set − random, without DSA).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ddpp_cli.engine.errors import DdppError

DEFAULT_WEIGHT = 0.5  # w of LRS (DD-Ranking's lrs_lambda)
DEFAULT_GAMMA = 0.5  # γ of ARS (DD-Ranking's ars_lambda)
# The random baseline's learning rates (DD-Ranking's lr_list in hard_label.py, soft_label.py).
LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)
SCORE_KEYS = ("hlr", "ior", "lrs", "ars")


def robust_score(exponent: float) -> float:
    """(e^x − e^−1) / (e − e^−1): 0 at x = −1, 1 at x = 1."""
    return (math.exp(exponent) - math.exp(-1.0)) / (math.exp(1.0) - math.exp(-1.0))


def label_robust_score(hlr: float, ior: float, weight: float = DEFAULT_WEIGHT) -> float:
    """LRS of one (HLR, IOR) pair: the robust score of α = w·IOR − (1 − w)·HLR."""
    return robust_score(weight * ior - (1.0 - weight) * hlr)


def augmentation_robust_score(
    with_aug: float, without_aug: float, gamma: float = DEFAULT_GAMMA
) -> float:
    """ARS: the robust score of β = γ·with_aug + (1 − γ)·without_aug, each a set − random gap."""
    return robust_score(gamma * with_aug + (1.0 - gamma) * without_aug)


@dataclass(frozen=True)
class Accuracies:
    """The per-run accuracies (fractions) the scores need, paired by run index."""

    full: Sequence[float]  # whole training set, hard labels, DSA
    set_labels: Sequence[float]  # the set with its own labels, DSA
    set_hard: Sequence[float]  # the set with hard labels, DSA
    set_no_dsa: Sequence[float]  # the set with its own labels, no DSA
    random: Sequence[float]  # random real images, DSA
    random_no_dsa: Sequence[float]  # random real images, no DSA


@dataclass(frozen=True)
class ScoresConvention:
    """How the scores are computed: on what the random baseline's lr is picked, in which unit
    the accuracies enter the exponent, and whether the scores are per run then averaged."""

    name: str
    label: str  # printed with the scores
    lr_picked_on: str  # "validation" (a held-out split of the pool) or "test"
    scale: float  # 1: fractions; 100: percent (DD-Ranking's code)
    per_run: bool  # scores of each run's accuracies, then their mean (DD-Ranking's loop)
    description: str


CONVENTIONS: dict[str, ScoresConvention] = {}


def register(convention: ScoresConvention) -> ScoresConvention:
    CONVENTIONS[convention.name] = convention
    return convention


register(ScoresConvention(
    "ddpp", "ddpp (fractions; random lr picked on a validation split)", "validation", 1.0, False,
    "accuracies as fractions, means over runs; the random baseline's lr is the grid's best on "
    "a validation split held out from the pool, then tested once",
))  # fmt: skip
register(ScoresConvention(
    "ddranking", "DD-Ranking's code (percent inside exp; random lr picked on test accuracy)",
    "test", 100.0, True,
    "DD-Ranking's metrics code: accuracies in percent inside exp, each run's random lr the "
    "grid's best test accuracy, the scores of each run averaged; for its leaderboard only",
))  # fmt: skip


def get_convention(name: str) -> ScoresConvention:
    """The convention named ``name``; DdppError listing the choices."""
    if name not in CONVENTIONS:
        raise DdppError(
            f"--scores-convention must be one of {', '.join(CONVENTIONS)} (got {name!r})."
        )
    return CONVENTIONS[name]


def check_weight(value: float, option: str = "--score-weight") -> float:
    """``value`` when it is in [0, 1]; DdppError otherwise."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise DdppError(f"{option} must be between 0 and 1 (got {value}).")
    return value


def _scores_of(
    full: float, set_labels: float, set_hard: float, set_no_dsa: float, random: float,
    random_no_dsa: float, weight: float, gamma: float,
) -> dict[str, float]:  # fmt: skip
    hlr = full - set_hard
    ior = set_labels - random
    return {
        "hlr": hlr,
        "ior": ior,
        "lrs": label_robust_score(hlr, ior, weight),
        "ars": augmentation_robust_score(set_labels - random, set_no_dsa - random_no_dsa, gamma),
    }


def compute_scores(
    accuracies: Accuracies,
    convention: ScoresConvention,
    weight: float = DEFAULT_WEIGHT,
    gamma: float = DEFAULT_GAMMA,
) -> dict[str, float]:
    """HLR, IOR, LRS and ARS under ``convention`` (HLR and IOR in its unit: fractions, or
    percent for DD-Ranking's). Per run: the runs are paired by index, as many as every list
    has (the whole-set accuracy, when it has fewer runs, is its mean for the others)."""
    fields = ("set_labels", "set_hard", "set_no_dsa", "random", "random_no_dsa")
    columns = [[convention.scale * a for a in getattr(accuracies, name)] for name in fields]
    full = [convention.scale * a for a in accuracies.full]
    if not convention.per_run:
        means = [statistics.fmean(column) for column in (full, *columns)]
        return _scores_of(*means, weight, gamma)
    runs = min(len(column) for column in columns)
    full_mean = statistics.fmean(full)
    per_run = [
        _scores_of(full[r] if r < len(full) else full_mean, *(c[r] for c in columns),
                   weight, gamma)
        for r in range(runs)
    ]  # fmt: skip
    return {key: statistics.fmean(s[key] for s in per_run) for key in SCORE_KEYS}


def pick_lr(grid_accuracies: dict[float, Sequence[float]]) -> float:
    """The lr whose mean accuracy is highest (the smaller lr on a tie, as DD-Ranking's strict
    ``acc > best_acc`` over an ascending grid keeps the first)."""
    best, best_mean = None, -math.inf
    for lr in sorted(grid_accuracies):
        mean = statistics.fmean(grid_accuracies[lr])
        if mean > best_mean:
            best, best_mean = lr, mean
    assert best is not None
    return best


def best_per_run(grid_accuracies: dict[float, Sequence[float]]) -> list[float]:
    """Each run's best accuracy over the grid (DD-Ranking: each evaluation's own search)."""
    runs = min(len(values) for values in grid_accuracies.values())
    return [max(grid_accuracies[lr][r] for lr in grid_accuracies) for r in range(runs)]
