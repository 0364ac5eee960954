"""The evaluation's progress events: one network of a run started, finished an epoch, finished
(alone, batched, on another rank, or read from the records)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkStarted:
    """Evaluation run ``run`` started training its network."""

    arch: str
    run: int  # 0-based
    runs: int
    epochs: int


@dataclass(frozen=True)
class NetworkEpochFinished:
    """The network of evaluation run ``run`` finished an epoch."""

    arch: str
    run: int
    epoch: int  # 1-based
    epochs: int


@dataclass(frozen=True)
class NetworkFinished:
    """The network of evaluation run ``run`` was tested (or its accuracy read from the records)."""

    arch: str
    run: int
    runs: int
    accuracy: float
    seconds: float
    diverged: bool = False
    resumed: bool = False  # read from the evaluation records, not trained now
