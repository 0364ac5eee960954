"""Baselines: coresets of real images evaluated under the same protocol as distilled sets
(docs/evaluation.md, the paper's Table I), optionally on a buffer's data.

The coresets themselves (random, herding, forgetting, herding-random) are the registry's
(:mod:`~ddpp_cli.engine.coresets`); a baseline prepares their pool and test split, takes run
``r``'s coreset (random: a new subset per run; the others: one for every run, their trained
selection kept beside the evaluation records), and evaluates it. A coreset is returned as
indices into the training split, and can be packed as a :class:`DistilledSet` (``source`` = the
method, ``lr=None``) with the dataset's preprocessing so that ``evaluate``, ``crossarch`` and
``visualize`` treat it like a distilled set.

Modules, one job each: ``config`` (:class:`BaselineConfig`), ``prepare`` (the data, as a
buffer's experts saw them with ``--buffer``), ``selection`` (:class:`Baseline`: each run's
coreset, kept selections, the coreset as a set), ``evaluation`` (:func:`evaluate_baseline`) and
``full`` (the whole training set: :func:`evaluate_full`, its cache, :func:`full_accuracy`).
Every public name is importable from here.
"""

from ddpp_cli.engine.baselines.config import BaselineConfig
from ddpp_cli.engine.baselines.evaluation import evaluate_baseline
from ddpp_cli.engine.baselines.full import (
    FullConfig,
    FullResult,
    cache_folder,
    evaluate_full,
    full_accuracy,
    full_identity,
)
from ddpp_cli.engine.baselines.prepare import prepare_baseline, prepare_pool
from ddpp_cli.engine.baselines.selection import Baseline, SelectionReused, coreset_set

__all__ = [
    "Baseline",
    "BaselineConfig",
    "FullConfig",
    "FullResult",
    "SelectionReused",
    "cache_folder",
    "coreset_set",
    "evaluate_baseline",
    "evaluate_full",
    "full_accuracy",
    "full_identity",
    "prepare_baseline",
    "prepare_pool",
]
