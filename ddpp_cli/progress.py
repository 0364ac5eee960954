"""Rich rendering helpers for the CLI: progress bars with rate and ETA, plain log lines, tables.

On a terminal, progress is rich's live display. When stderr is not a terminal (a SLURM log,
``2> log``), rich would draw nothing until the end, so :class:`LogLineProgress` prints plain
lines instead, at each finished unit and every ``DDPP_PROGRESS_INTERVAL`` seconds (default 30).
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

LOG_INTERVAL_SECONDS = 30.0
INTERVAL_VARIABLE = "DDPP_PROGRESS_INTERVAL"
# A task field: in a log, a task created with ``log_each=True`` prints a line at every unit it
# completes (an expert's epoch, an evaluation network), however short, not only at its end.
EACH_UNIT = "log_each"


class RateColumn(ProgressColumn):
    """Items per second, or seconds per item when slower than one a second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("  –  ", style="progress.data.speed")
        return Text(rate_text(speed), style="progress.data.speed")


def rate_text(per_second: float) -> str:
    """``2.50 it/s``, or ``1.9 s/it`` when slower than one a second."""
    return f"{per_second:.2f} it/s" if per_second >= 1 else f"{1 / per_second:.1f} s/it"


def clock(seconds: float | None) -> str:
    """``H:MM:SS`` for a duration, ``–`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "–"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class LogLineProgress(Progress):
    """Progress for logs that are not terminals: rich's task bookkeeping, printed as lines.

    One plain line per visible task when it finishes (for the per-unit bars, each expert's epochs
    or each evaluation run, that is every finished unit), at every completed unit of a task made
    with ``log_each=True`` (:data:`EACH_UNIT`), and otherwise at most every ``interval``
    seconds, e.g. ``12:03:04 iterations 120/5000 (2.4 %) 1.9 s/it ETA 2:34:10 loss 0.8812 …``:
    stage, position/total, rate since the task (re)started, time left and its key figures.
    """

    def __init__(self, *columns: Any, interval: float = LOG_INTERVAL_SECONDS, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self.interval = interval
        self._marks: dict[TaskID, tuple[float, float, float]] = {}  # start, start count, last line

    def start(self) -> None:
        """No live display: off a terminal it would print only once, at the end."""

    def stop(self) -> None:
        """Nothing to tear down (see :meth:`start`)."""

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._mark(task_id)
        return task_id

    def reset(self, task_id: TaskID, **kwargs: Any) -> None:
        super().reset(task_id, **kwargs)
        self._mark(task_id)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        before = self._tasks[task_id]
        finished_before, completed_before = before.finished, before.completed
        super().update(task_id, **kwargs)
        self._maybe_print(task_id, finished_before, completed_before)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        before = self._tasks[task_id]
        finished_before, completed_before = before.finished, before.completed
        super().advance(task_id, advance)
        self._maybe_print(task_id, finished_before, completed_before)

    def print_now(self, task_id: TaskID) -> None:
        """The task's line now (e.g. at a checkpoint), whatever the interval."""
        task = self._tasks[task_id]
        if self.disable or not task.visible:
            return
        started, start_count, _ = self._marks[task_id]
        now = self.get_time()
        self._marks[task_id] = (started, start_count, now)
        line = log_line(task, now - started, task.completed - start_count)
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _mark(self, task_id: TaskID) -> None:
        now = self.get_time()
        self._marks[task_id] = (now, self._tasks[task_id].completed, now)

    def _maybe_print(self, task_id: TaskID, finished_before: bool, completed_before: float) -> None:
        task = self._tasks[task_id]
        if self.disable or not task.visible:
            return
        last_line = self._marks[task_id][2]
        now = self.get_time()
        unit_done = bool(task.fields.get(EACH_UNIT)) and task.completed > completed_before
        finished = task.finished and not finished_before
        if finished or unit_done or now - last_line >= self.interval:
            self.print_now(task_id)


def log_line(task: Task, elapsed: float, done: float, now: float | None = None) -> str:
    """One plain progress line for ``task``: ``done`` units took ``elapsed`` seconds."""
    parts = [
        time.strftime("%H:%M:%S", time.localtime(now)),
        Text.from_markup(task.description).plain,
    ]
    if task.total:
        parts.append(
            f"{task.completed:g}/{task.total:g} ({100 * task.completed / task.total:.1f} %)"
        )
    else:
        parts.append(f"{task.completed:g}")
    if elapsed > 0 and done > 0:
        rate = done / elapsed
        parts.append(rate_text(rate))
        if task.total:
            parts.append(f"ETA {clock(max(task.total - task.completed, 0) / rate)}")
    info = Text.from_markup(str(task.fields.get("info", ""))).plain.strip()
    if info:
        parts.append(info)
    return " ".join(parts)


def milestone(progress: Progress, task_id: TaskID | None) -> None:
    """In a log, the task's line now (a checkpoint saved, a unit worth a line); nothing on a
    terminal, whose bars already show it."""
    if isinstance(progress, LogLineProgress) and task_id is not None:
        progress.print_now(task_id)


def log_interval() -> float:
    """Seconds between plain progress lines: ``DDPP_PROGRESS_INTERVAL`` or 30."""
    try:
        return max(float(os.environ.get(INTERVAL_VARIABLE, LOG_INTERVAL_SECONDS)), 0.0)
    except ValueError:
        return LOG_INTERVAL_SECONDS


def make_progress(console: Console, disable: bool = False) -> Progress:
    """The standard ddpp progress display: rich bars on a terminal, plain lines in a log."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    if not console.is_terminal:
        return LogLineProgress(*columns, console=console, disable=disable, interval=log_interval())
    return Progress(*columns, console=console, disable=disable, transient=False)


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal, or '–'."""
    if value is None or value != value:
        return "–"
    return f"{100 * value:.1f} %"
