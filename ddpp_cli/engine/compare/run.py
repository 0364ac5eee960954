"""The comparison itself: :func:`compare` runs or reuses each row in order, in its folder
``RUN/compare/<row>/`` with a ``row.json`` (settings, then the result), and writes the table.
A row of other settings is never overwritten; an unfinished row continues."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ddpp_cli import __version__
from ddpp_cli.engine import allocator, data, evaluate, layout, store
from ddpp_cli.engine.buffer import train_buffer
from ddpp_cli.engine.compare.events import CompareStarted, StepFinished, StepStarted
from ddpp_cli.engine.compare.rows import ROWS, parse_rows, row_budgets
from ddpp_cli.engine.compare.runners import RUNNERS, RowJob, RowRunner, row_settings
from ddpp_cli.engine.compare.table import (
    JSON_NAME,
    MARKDOWN_NAME,
    CompareSummary,
    RowResult,
    markdown,
)
from ddpp_cli.engine.evaluate.records import check_result_json
from ddpp_cli.engine.events import Notice, OnEvent
from ddpp_cli.engine.layout import ROW_NAME, ROWS_DIRNAME
from ddpp_cli.engine.pipeline import RunPlan, choose_buffer
from ddpp_cli.engine.published import reference
from ddpp_cli.engine.visualize.compare_chart import CHART_NAMES, write_chart

ROW_FORMAT = "ddpp.compare-row/1"


def default_compare_folder(plan: RunPlan, now: datetime | None = None) -> Path:
    """``<data home>/runs/<dataset>-ipc<K>-compare-<timestamp>``."""
    return layout.default_runs_folder(f"{plan.distill.dataset}-ipc{plan.distill.ipc}-compare", now)


def check_compare_folder(folder: Path) -> None:
    """DdppError when ``folder`` holds anything but an earlier comparison's files."""
    layout.check_output_folder(
        folder, {MARKDOWN_NAME, JSON_NAME, *CHART_NAMES, ROWS_DIRNAME}, "ddpp comparison"
    )


def read_row(folder: Path) -> dict[str, Any] | None:
    """A row folder's ``row.json`` (None when absent or not readable as one; DdppError when a
    key of it is missing or wrongly typed)."""
    try:
        content = json.loads((folder / ROW_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != ROW_FORMAT:
        return None
    check_row(folder / ROW_NAME, content)
    return content


_ROW_REMEDY = "delete its folder to run the row again"
_ROW_KEYS: dict[str, store.Check] = {
    "status": (lambda v: v in ("started", "finished"), "must be started or finished"),
    "settings": store.OBJECT,
    "result": store.OBJECT,
}
_ROW_RESULT_KEYS: dict[str, store.Check] = {
    "seconds": store.NUMBER,
    "set": store.optional(store.TEXT),
}


def check_row(path: Path, content: dict[str, Any]) -> None:
    """DdppError naming ``path`` (a ``row.json``) and the first key that is missing or wrongly
    typed; a finished row's result is checked whole (what reusing it reads)."""
    store.check_keys(
        path, content, _ROW_KEYS, what="comparison row", remedy=_ROW_REMEDY,
        required=("status", "settings"),
    )  # fmt: skip
    if content["status"] != "finished":
        return
    if "result" not in content:
        raise store.unusable(path, "comparison row", "result", "is missing", _ROW_REMEDY)
    result = content["result"]
    store.check_keys(
        path, result, _ROW_RESULT_KEYS, what="comparison row", remedy=_ROW_REMEDY,
        required=("seconds",), prefix="result.",
    )  # fmt: skip
    check_result_json(
        path, "result.evaluation", result.get("evaluation"), what="comparison row",
        remedy=_ROW_REMEDY,
    )  # fmt: skip


def row_folder(
    base: Path, row: str, settings: dict[str, Any], emit: OnEvent
) -> tuple[Path, dict[str, Any] | None]:
    """The folder of ``row`` under ``base`` and its saved ``row.json`` when its settings match
    (None: a fresh folder). ``base/row`` first, then ``row-2``, ``row-3``, …: the first whose
    settings match, else the first that does not exist (a Notice says why the first was not
    used). Never a folder of other settings."""
    first: tuple[Path, str] | None = None
    number = 1
    while True:
        folder = base / (row if number == 1 else f"{row}-{number}")
        if not folder.exists():
            if first is not None:
                emit(Notice(f"{first[0]} holds the {row} row of other settings ({first[1]}); "
                            f"this one goes to {folder}."))  # fmt: skip
            return folder, None
        saved = read_row(folder)
        if saved is not None and saved.get("settings") == settings:
            return folder, saved
        if first is None:
            why = "no readable row.json" if saved is None else store.describe_difference(
                saved.get("settings") or {}, settings
            )  # fmt: skip
            first = (folder, why)
        number += 1


def _write_row(folder: Path, settings: dict[str, Any], result: RowResult | None) -> None:
    content: dict[str, Any] = {
        "format": ROW_FORMAT,
        "ddpp_version": __version__,
        "status": "started" if result is None else "finished",
        "settings": settings,
    }
    if result is not None:
        content["result"] = result.to_json()
    store.atomic_write_text(folder / ROW_NAME, json.dumps(content, indent=2) + "\n")


def _reused_row(job: RowJob, saved: dict[str, Any]) -> RowResult:
    """The result a finished row's ``row.json`` recorded."""
    recorded = saved["result"]
    set_path = recorded.get("set")
    return RowResult(
        row=job.row,
        result=evaluate.EvalResult.from_json(recorded["evaluation"]),
        seconds=float(recorded["seconds"]),
        reused=True,
        set_path=None if set_path is None else Path(set_path),
        folder=job.folder,
        budget=job.budget,
        reference=reference(job.plan.distill.dataset, job.plan.distill.ipc, job.row),
    )


def compare(
    plan: RunPlan,
    rows: Sequence[str],
    folder: Path | None = None,
    *,
    budgets: Mapping[str, int] | None = None,
    buffer: Path | None = None,
    data_root: Path | None = None,
    download: bool = True,
    device: torch.device | str = "cpu",
    parallel: int = 1,
    on_event: OnEvent | None = None,
    runners: Mapping[str, RowRunner] | None = None,
    scores: Any = None,
) -> CompareSummary:
    """Run or reuse every row of ``rows`` (in that order) under ``plan``'s evaluation protocol
    and write ``compare.md`` and ``compare.json`` in ``folder``.

    ``budgets`` overrides rows' budgets (:func:`row_budgets`); the run's buffer (``buffer``, or
    one found or trained as ``ddpp run`` does) is made only when a trajectory row asks for it.
    ``runners`` replaces the runner of a row by name (default: :data:`RUNNERS` by kind).
    Events of every step go to ``on_event``. ``scores`` (a ``scores_gather.ScoresRequest``)
    adds DD-Ranking's scores to every row with a set, on top of the finished rows.
    """
    emit = on_event or (lambda event: None)
    rows = tuple(parse_rows(",".join(rows)))
    row_budget = row_budgets(plan, rows, budgets)
    folder = Path(folder) if folder is not None else default_compare_folder(plan)
    check_compare_folder(folder)
    allocator.keep_for_process()  # a process that distils keeps freed memory throughout
    data_folder = data.source_folder(plan.distill.dataset, data_root)
    emit(CompareStarted(plan, rows, folder, data_folder))
    wants_buffer = any(ROWS[row].needs_buffer for row in rows)
    total = len(rows) + wants_buffer
    buffer_dir = None
    sources = {"data_root": data_root, "download": download}
    if wants_buffer:
        buffer_dir = _buffer_step(plan, buffer, total, emit, sources, device, parallel, on_event,
                                  data_folder)  # fmt: skip
    results = []
    for index, row in enumerate(rows, start=1 + wants_buffer):
        job = RowJob(
            row, plan, row_budget[row], folder / ROWS_DIRNAME / row, buffer_dir, data_root,
            download, device, parallel, on_event,
        )  # fmt: skip
        runner = (runners or {}).get(row) or RUNNERS[ROWS[row].kind]
        results.append(_row_step(job, runner, index, total, emit))
    if scores is not None:
        from ddpp_cli.engine.scores_jobs import Where, scored_rows

        where = Where(data_root, download, device, parallel, on_event)
        results = scored_rows(plan, results, folder, buffer_dir, scores, where, budgets)
    summary = CompareSummary(folder, plan, data_folder, buffer_dir, tuple(results))
    store.atomic_write_text(summary.json_path, json.dumps(summary.to_json(), indent=2) + "\n")
    store.atomic_write_text(summary.markdown_path, markdown(summary))
    write_chart(summary.json_path, folder / CHART_NAMES[0])
    return summary


def _buffer_step(
    plan: RunPlan, buffer: Path | None, total: int, emit: OnEvent, sources: dict[str, Any],
    device: torch.device | str, parallel: int, on_event: OnEvent | None, source: Path,
) -> Path:  # fmt: skip
    """The one buffer the trajectory rows distill from, reused or trained as ``ddpp run`` does."""
    buffer_dir, reused = choose_buffer(plan, buffer, emit, source)
    started = time.perf_counter()
    if reused:
        emit(StepStarted("buffer", 1, total, f"reusing {buffer_dir}"))
    else:
        emit(StepStarted("buffer", 1, total, f"training into {buffer_dir}"))
        train_buffer(
            plan.buffer, buffer_dir, device=device, parallel=parallel, on_event=on_event,
            **sources,
        )  # fmt: skip
    emit(StepFinished("buffer", time.perf_counter() - started, str(buffer_dir), reused))
    return buffer_dir


def _row_step(job: RowJob, runner: RowRunner, index: int, total: int, emit: OnEvent) -> RowResult:
    """One row: reused when a finished one of the same settings exists, else run (or resumed)."""
    settings = row_settings(job)
    folder, saved = row_folder(job.folder.parent, job.row, settings, emit)
    job = replace(job, folder=folder)
    if saved is not None and saved.get("status") == "finished":
        emit(StepStarted(job.row, index, total, f"reusing {folder}"))
        result = _reused_row(job, saved)
        emit(StepFinished(job.row, 0.0, f"{result.result.mean_std_text()} %", reused=True))
        return result
    verb = "continuing in" if saved is not None else "into"
    budget = f"{job.budget.text()}, " if job.budget.unit is not None else ""
    emit(StepStarted(job.row, index, total, f"{budget}{verb} {folder}"))
    folder.mkdir(parents=True, exist_ok=True)
    _write_row(folder, settings, None)
    started = time.perf_counter()
    evaluation, set_path = runner(job)
    seconds = time.perf_counter() - started
    result = RowResult(
        row=job.row, result=evaluation, seconds=seconds, reused=False, set_path=set_path,
        folder=folder, budget=job.budget,
        reference=reference(job.plan.distill.dataset, job.plan.distill.ipc, job.row),
    )  # fmt: skip
    _write_row(folder, settings, result)
    emit(StepFinished(job.row, seconds, f"{evaluation.mean_std_text()} %"))
    return result
