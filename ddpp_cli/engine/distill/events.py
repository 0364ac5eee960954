"""What a distillation run reports (``on_event``) and returns, and its divergence error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpp_cli.engine.distill.config import DistillConfig
from ddpp_cli.engine.distill.methods import DEFAULT_METHOD
from ddpp_cli.engine.distilled import HARD_LABELS_TEXT
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalResult
from ddpp_cli.engine.model_selection import DEFAULT_SELECTION


class DivergedError(DdppError):
    """The run diverged (non-finite loss, lr or images, or lr ≤ 0); the last good state is saved.

    The CLI maps it to exit status 1 (not 2: the input was valid, the optimisation failed).
    """

    def __init__(self, message: str, *, iteration: int, distilled: Path, metrics: Path) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.distilled = distilled
        self.metrics = metrics


@dataclass(frozen=True)
class DistillStarted:
    folder: Path
    config: DistillConfig  # resolved against the buffer
    buffer: Path | None  # None: a method without buffer (dc, dsa, dm, cafe)
    experts: int
    buffer_epochs: int
    num_params: int
    train_size: int
    val_size: int
    test_size: int
    preprocessing: str
    start_iteration: int
    resumed: bool
    device: str
    derived: dict[str, str] = field(default_factory=dict)  # setting -> "derived: …" (autolr)


@dataclass(frozen=True)
class IterationFinished:
    iteration: int  # 1-based: the number of updates done
    iterations: int
    loss: float
    pruned_fraction: float | None  # tm only, like lr, start_epoch and expert
    lr: float | None  # α after this iteration's update
    start_epoch: int | None
    expert: int | None
    seconds: float
    method: str = DEFAULT_METHOD
    details: dict[str, Any] = field(default_factory=dict)  # the method's own numbers


@dataclass(frozen=True)
class ValidationStarted:
    iteration: int
    runs: int
    epochs: int


@dataclass(frozen=True)
class ValidationFinished:
    iteration: int
    accuracy: float
    std: float
    best_iteration: int
    best_accuracy: float


@dataclass(frozen=True)
class CheckpointSaved:
    iteration: int
    path: Path


@dataclass(frozen=True)
class TestStarted:
    path: Path
    runs: int
    epochs: int


@dataclass(frozen=True)
class TestFinished:
    path: Path
    result: EvalResult


@dataclass(frozen=True)
class DistillSummary:
    folder: Path
    distilled: Path
    best: Path | None
    checkpoint: Path
    metrics: Path
    summary: Path
    iterations: int
    final_lr: float | None  # None: a method that learns no step size
    best_iteration: int | None
    best_val_accuracy: float | None
    tested: Path | None
    test: EvalResult | None
    pruned_fraction: dict[str, float] = field(default_factory=dict)  # min, max, mean
    seconds: float = 0.0
    method: str = DEFAULT_METHOD
    selection: str = DEFAULT_SELECTION  # the rule's name (engine/model_selection.py)
    labels: str = HARD_LABELS_TEXT  # the set's labels as tables name them (DistilledSet.label_text)
