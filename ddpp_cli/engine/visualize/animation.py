"""Animation of a run: a GIF of its class grid, one frame per image snapshot the run kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpp_cli.engine.distilled import load as load_set
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.layout import (
    BEST_NAME,
    CHECKPOINT_NAME,
    DISTILLED_NAME,
    METRICS_NAME,
    SNAPSHOTS_DIRNAME,
)
from ddpp_cli.engine.visualize.files import save_image
from ddpp_cli.engine.visualize.grid import class_grid
from ddpp_cli.engine.visualize.labels import run_labels

RUN_MARKERS = (CHECKPOINT_NAME, DISTILLED_NAME, BEST_NAME, METRICS_NAME)


def snapshot_files(run: Path) -> list[Path]:
    """The image snapshots a run kept (``ddpp distill --snapshot-every N``), oldest first."""
    folder = Path(run) / SNAPSHOTS_DIRNAME
    found = [p for p in folder.glob("iter_*.safetensors") if p.stem[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[5:]))


def animation(
    run: Path, out: Path, *, seconds_per_frame: float = 0.25, **grid_options: Any
) -> Path:
    """A GIF of the class grid over a run, one frame per image snapshot the run kept.

    ``ddpp distill`` keeps snapshots only when asked (``--snapshot-every N``); for a run without
    them this raises a DdppError saying how to get them. ``grid_options`` go to
    :func:`class_grid` (``clip``, ``upsample``, ``classes``, ``max_per_row``, ``zca_path``).
    Every frame of a run that made label vectors names them (:func:`~.labels.run_labels`: a
    learned-label run's snapshots keep only the images).
    """
    files = animation_sources(run, out)
    labels = run_labels(run)
    frames = [class_grid(load_set(path), labels=labels, **grid_options) for path in files]
    frame_ms = max(20, round(1000 * seconds_per_frame))
    return save_image(frames[0], out, frames=frames[1:], frame_ms=frame_ms)


def animation_sources(run: Path, out: Path) -> list[Path]:
    """The snapshot files :func:`animation` would draw; DdppError when there are none or ``out``
    is not a GIF (so the CLI can check before writing anything)."""
    run = Path(run)
    if not run.is_dir():
        raise DdppError(f"--animate needs a 'ddpp distill' run folder; {run} is not a folder.")
    if not any((run / name).exists() for name in RUN_MARKERS):
        raise DdppError(f"{run} is not a 'ddpp distill' run folder; nothing to animate.")
    files = snapshot_files(run)
    if not files:
        raise DdppError(
            f"the run in {run} kept no image snapshots, so there is nothing to animate; distill "
            "with --snapshot-every N to keep the images every N iterations, or draw the final "
            "set with --out."
        )
    if Path(out).suffix.lower() != ".gif":
        raise DdppError(f"--animate writes a GIF; name the file .gif, not {Path(out).name}.")
    return files
