"""The events of ``ddpp run --compare`` (the display turns them into lines and bars)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddpp_cli.engine.pipeline import RunPlan


@dataclass(frozen=True)
class CompareStarted:
    plan: RunPlan
    rows: tuple[str, ...]
    folder: Path
    data_folder: Path


@dataclass(frozen=True)
class StepStarted:
    step: str  # "buffer" or a row name
    index: int  # 1-based
    total: int
    detail: str


@dataclass(frozen=True)
class EvaluationStarted:
    """A row's set is made; its evaluation under the plan's protocol starts."""

    row: str


@dataclass(frozen=True)
class StepFinished:
    step: str
    seconds: float
    detail: str
    reused: bool = False
