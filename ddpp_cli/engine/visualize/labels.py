"""The label mode a picture names: a set's label text, a run's, and a grid's caption.

A set with label vectors is named by :attr:`DistilledSet.label_text` ("learned labels (soft
CE, T 1)"), as tables name it; a hard-label set's pictures name nothing (they stay as before).
"""

from __future__ import annotations

import json
from pathlib import Path

from ddpp_cli.engine.distilled import HARD_LABELS_TEXT, DistilledSet
from ddpp_cli.engine.distilled import load as load_set
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.layout import BEST_NAME, DISTILL_SUMMARY_NAME, DISTILLED_NAME
from ddpp_cli.engine.model_selection import VALIDATION_LABEL, label_of_settings

CAPTION_SEPARATOR = "; "


def set_labels(distilled: DistilledSet) -> str | None:
    """The set's label text when it has label vectors; None for hard labels."""
    return None if distilled.targets is None else distilled.label_text


def run_labels(run: Path) -> str | None:
    """The label text of a ``ddpp distill`` run that made label vectors (None: hard labels, or
    nothing recorded yet): ``summary.json``'s ``labels``, else its set's (best, else final)."""
    run = Path(run)
    if not run.is_dir():
        return None
    try:
        recorded = json.loads((run / DISTILL_SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and isinstance(recorded.get("labels"), str):
        return None if recorded["labels"] == HARD_LABELS_TEXT else recorded["labels"]
    for name in (BEST_NAME, DISTILLED_NAME):
        if (run / name).is_file():
            try:
                return set_labels(load_set(run / name))
            except DdppError:
                return None  # an unreadable set: the picture names no labels
    return None


def caption_text(distilled: DistilledSet, labels: str | None = None) -> str | None:
    """The caption under a set's grid: its labels (``labels``, else the set's own label vectors'
    text) and its selection when not the validation one, joined by "; "; None when neither."""
    parts = [labels or set_labels(distilled), label_of_settings(distilled.settings)]
    if parts[1] == VALIDATION_LABEL:
        parts[1] = None
    shown = [part for part in parts if part]
    return CAPTION_SEPARATOR.join(shown) if shown else None
