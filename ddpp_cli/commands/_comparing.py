"""``ddpp run --compare``: its options, the run and its table (the progress display is
:class:`._displays.RunDisplay`, as for one run)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ddpp_cli.commands._display import distilling, err, joined_world, line, out
from ddpp_cli.commands._displays import RunDisplay
from ddpp_cli.commands._scores import ScoresDisplay
from ddpp_cli.engine import compare as compare_engine
from ddpp_cli.engine import faults, layout, pipeline
from ddpp_cli.engine.compare.table import TEST_SELECTED_MARK, TEST_SELECTED_NOTE, test_selected
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.published import UNCONFIRMED_NOTE
from ddpp_cli.progress import make_progress

COMPARE = "Comparison (--compare)"

CompareOpt = Annotated[
    str | None,
    typer.Option(
        "--compare",
        help="Instead of one run, the paper's Table I: these rows, in this order, under one "
        f"evaluation protocol ({', '.join(compare_engine.ROWS)}; all = "
        f"{','.join(compare_engine.TABLE_I)}); writes compare.md, compare.json and compare.png.",
        rich_help_panel=COMPARE,
    ),
]
CompareBudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--compare-budget",
        help="Rows' budgets as ROW=COUNT,… (iterations; forgetting, full: epochs), e.g. "
        f"dsa=200,dm=400 (default: the profile's; quick: {compare_engine.quick_budgets_text()}, "
        "mtt/ddpp the run's iterations; the table shows each row's cuts next to the paper's).",
        rich_help_panel=COMPARE,
    ),
]


def refuse_with_compare(given: dict[str, Any], budgets: str | None, compare: str | None) -> None:
    """One line for options that make no sense with (or without) ``--compare``."""
    if compare is None:
        if budgets is not None:
            raise DdppError("--compare-budget sets the rows of --compare; add --compare ROWS.")
        return
    if "iterations" in given:
        raise DdppError(
            "--iterations is ambiguous with --compare; set each row's budget with "
            "--compare-budget (e.g. mtt=100,ddpp=100)."
        )
    if given.get("eps") == 0:
        raise DdppError("--eps 0 makes the ddpp row the mtt row; give ε > 0 with --compare.")


def compare_table(summary: compare_engine.CompareSummary) -> Table:
    d = summary.plan.distill
    table = Table(
        title=f"ddpp run --compare: {d.dataset}, IPC {d.ipc}, profile {summary.plan.profile}",
        title_justify="left",
    )
    table.add_column("method")
    for name in ("test accuracy", "runs", "time"):
        table.add_column(name, justify="right")
    table.add_column("budget")
    table.add_column("published")
    scored = compare_engine.has_scores(summary)
    for name in ("HLR", "IOR", "LRS", "ARS") if scored else ():
        table.add_column(name, justify="right")
    for row in summary.rows:
        table.add_row(
            row.label + (TEST_SELECTED_MARK if test_selected(row) else ""),
            f"[bold]{row.result.mean_std_text()} %[/]",
            str(len(row.result.accuracies)),
            compare_engine.time_text(row),
            row.budget.text(),
            "–" if row.reference is None else row.reference.text(),
            *(compare_engine.score_cells(row) if scored else ()),
        )
    return table


def print_compare(summary: compare_engine.CompareSummary) -> None:
    out.print(compare_table(summary))
    if any(test_selected(row) for row in summary.rows):
        line(out, f"{TEST_SELECTED_MARK.strip()} {TEST_SELECTED_NOTE}")
    line(out, f"protocol: {compare_engine.protocol_text(summary)}")
    if compare_engine.has_scores(summary):
        line(out, f"scores: {compare_engine.scores_text(summary)}")
    sources = compare_engine.published_sources(summary)
    if sources:
        line(out, f"{compare_engine.PUBLISHED_HEADING}: {' | '.join(sources)}")
        if any(not row.reference.confirmed for row in summary.rows if row.reference):
            line(out, UNCONFIRMED_NOTE)
    for row in summary.rows:
        line(out, f"{row.row + ':':<12}{row.set_path if row.set_path else row.folder}")
    if summary.buffer is not None:
        line(out, f"{'buffer:':<12}{summary.buffer}")
    line(out, f"{'table:':<12}{summary.markdown_path}")
    line(out, f"{'json:':<12}{summary.json_path}")
    line(out, f"{'chart:':<12}{summary.folder / layout.COMPARE_CHART_NAME}")


def compare_and_report(
    plan: pipeline.RunPlan,
    rows: str,
    budgets: str | None,
    engine_options: dict[str, Any],
    *,
    quiet: bool,
    json_out: bool,
    scores: Any = None,
) -> None:
    """Run the comparison with one progress display, then print the table (or JSON, or the
    folder). ``engine_options`` are those of ``ddpp run``."""
    row_names = compare_engine.parse_rows(rows)
    budget_values = compare_engine.parse_budgets(budgets)
    compare_engine.row_budgets(plan, row_names, budget_values)  # refuse before any work
    world, torch_device = joined_world(engine_options["device"])
    if world.distributed:
        raise DdppError("--compare runs in one process; start it without torchrun.")
    folder = engine_options["out_dir"] or compare_engine.default_compare_folder(plan)
    silent = quiet or json_out
    progress = make_progress(err, disable=silent)
    display = RunDisplay(progress, plan, silent, str(torch_device))
    hint = f"finished rows and checkpoints are kept; rerun with --out {folder} to continue."

    def continuation(failed: faults.StageFailed) -> str:
        return f"continue by running the same command again with --out {folder}"

    with layout.writing(folder), distilling(progress, hint, continuation):
        summary = compare_engine.compare(
            plan, row_names, folder, budgets=budget_values, buffer=engine_options["buffer_dir"],
            data_root=engine_options["data_dir"], download=engine_options["download"],
            device=torch_device, parallel=engine_options["parallel"],
            on_event=ScoresDisplay(progress, display), scores=scores,
        )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(summary.to_json()))
    elif quiet:
        line(out, str(summary.folder))
    else:
        print_compare(summary)
