"""What training (or importing) a buffer reports, in order: the buffer started, each expert
started, each of its epochs finished, each expert finished (with its record), and the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BufferStarted:
    folder: Path
    total: int | None  # None: an import without --experts learns the count at its last file
    existing: int
    train_size: int
    test_size: int
    num_params: int
    preprocessing: str


@dataclass(frozen=True)
class ExpertStarted:
    index: int
    epochs: int


@dataclass(frozen=True)
class EpochFinished:
    index: int
    epoch: int
    epochs: int
    train_loss: float
    test_accuracy: float


@dataclass(frozen=True)
class ExpertRecord:
    """One expert of a buffer: where it is and how well it did after each epoch."""

    index: int
    path: Path
    test_accuracy: list[float]
    seconds: float | None = None
    resumed: bool = False


@dataclass(frozen=True)
class ExpertFinished:
    record: ExpertRecord


@dataclass(frozen=True)
class BufferSummary:
    folder: Path
    manifest: Path
    zca: Path | None
    experts: list[ExpertRecord] = field(default_factory=list)
