"""The pool a coreset is chosen from: what a selection is given (:class:`CoresetRequest`) and
the check of ``--ipc`` against the pool's smallest class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data
from ddpp_cli.engine.errors import DdppError


@dataclass(frozen=True, eq=False)
class CoresetRequest:
    """What a selection is given: the pool (``train``, in model-input space: normalised or
    whitened), the images per class, the seed, the network of its features or counts
    (``arch``), a buffer's expert (herding's features with ``--buffer``) and the coreset's own
    options (``BaselineConfig`` fields, e.g. ``forgetting_epochs``)."""

    train: data.ImageSplit
    ipc: int
    seed: int
    arch: str = "convnet"
    expert_file: Path | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, name: str) -> Any:
        """The value of the coreset's own option ``name``."""
        return dict(self.options)[name]


def check_ipc(train: data.ImageSplit, ipc: int) -> torch.Tensor:
    """Images per class of ``train``; DdppError when ``ipc`` < 1 or above the smallest class."""
    if ipc < 1:
        raise DdppError(f"--ipc must be at least 1 (got {ipc}).")
    counts = data.class_counts(train)
    smallest = int(counts.min())
    if ipc > smallest:
        label = int(counts.argmin())
        raise DdppError(
            f"--ipc {ipc} is more than class '{train.class_names[label]}' has ({smallest} "
            f"images); use --ipc {smallest} or less."
        )
    return counts
