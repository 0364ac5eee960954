"""``--scores``: DD-Ranking's scores on ``evaluate``, ``run`` and ``run --compare``: the
options, the request they make, the engine call for one set, and the scores' small table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ddpp_cli.commands._display import line, out
from ddpp_cli.engine import scores, scores_jobs
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.scores_gather import ScoreFinished, ScoresRequest, ScoreStarted

SCORES = "Scores (DD-Ranking)"

ScoresOpt = Annotated[
    bool,
    typer.Option(
        "--scores",
        help="Also DD-Ranking's scores: HLR, IOR, LRS, ARS (docs/evaluation.md#scores); trains "
        "what no record holds: the set with hard labels and without DSA, random real images "
        "at each lr of the grid, the whole training set (its cache).",
        rich_help_panel=SCORES,
    ),
]
ScoreWeightOpt = Annotated[
    float | None,
    typer.Option(
        "--score-weight",
        help=f"w of LRS = score(w·IOR − (1 − w)·HLR) (default {scores.DEFAULT_WEIGHT:g}).",
        rich_help_panel=SCORES,
    ),
]
ConventionOpt = Annotated[
    str | None,
    typer.Option(
        "--scores-convention",
        help="ddpp (default: fractions, the random lr picked on a validation split) or "
        "ddranking (DD-Ranking's code: percent inside exp, the random lr picked on test "
        "accuracy; for its leaderboard only).",
        rich_help_panel=SCORES,
    ),
]


def scores_request(
    wanted: bool, weight: float | None, convention: str | None
) -> ScoresRequest | None:
    """The request of ``--scores`` (None without it); DdppError for its options alone."""
    if not wanted:
        pairs = (("--score-weight", weight), ("--scores-convention", convention))
        given = [flag for flag, value in pairs if value is not None]
        if given:
            raise DdppError(f"{', '.join(given)} set the scores; add --scores.")
        return None
    return ScoresRequest(
        weight=scores.DEFAULT_WEIGHT if weight is None else weight,
        convention=(convention or "ddpp").strip().lower(),
    )


def pop_request(options: dict[str, Any]) -> ScoresRequest | None:
    """Take the three scores options out of a command's ``options``; their request."""
    return scores_request(
        options.pop("scores"), options.pop("score_weight"), options.pop("scores_convention")
    )


def set_payload(
    path: Path, result: Any, distilled_set: Any, config: Any, options: dict[str, Any],
    run: dict[str, Any], display: Any,
) -> dict[str, Any]:  # fmt: skip
    """``ddpp evaluate SET``'s JSON, with ``scores`` when ``--scores`` asks for them (computed
    with the evaluation's own records, so its runs are reused)."""
    payload = {"set": str(path), **result.to_json()}
    request = scores_request(
        options["scores"], options["score_weight"], options["scores_convention"]
    )
    if request is None:
        if options["train_subset"] is not None:
            raise DdppError("--train-subset applies to a set only with --scores (its pool).")
        return payload
    if run["world"].distributed:
        raise DdppError("--scores runs in one process; start it without torchrun.")
    where = scores_jobs.Where(
        options["data_dir"], options["download"], run["device"], run["parallel"],
        ScoresDisplay(display.progress, display),
    )  # fmt: skip
    with display.progress:
        found = scores_jobs.score_set_file(
            distilled_set, config, request, records=run["records"],
            train_subset=options["train_subset"], test_subset=options["test_subset"],
            zca_path=options["zca_file"], where=where,
        )  # fmt: skip
    return payload | {"scores": found.to_json()}


class ScoresDisplay:
    """Bars for each evaluation the scores train (a fresh :class:`EvalDisplay` per
    ``ScoreStarted``, its bars removed at ``ScoreFinished``) and a line per accuracy; every
    other event goes to ``inner`` (the command's own display)."""

    def __init__(self, progress: Any, inner: Any) -> None:
        self.progress, self.inner = progress, inner
        self.current: Any = None
        self.tasks_before: set = set()

    def __call__(self, event: object) -> None:
        from ddpp_cli.commands._evaluation import EvalDisplay

        p = self.progress
        if isinstance(event, ScoreStarted):
            self.tasks_before = set(p.task_ids)
            self.current = EvalDisplay(p)
        elif isinstance(event, ScoreFinished):
            for task in set(p.task_ids) - self.tasks_before:
                p.remove_task(task)
            self.current = None
            if not p.disable:
                p.console.print(
                    f"    scores {event.label}: {100 * event.accuracy:.2f} % ({event.source})",
                    highlight=False,
                )
        elif self.current is not None:
            self.current(event)
        elif self.inner is not None:
            self.inner(event)


def unit_text(found: dict[str, Any]) -> str:
    return "fractions" if found["unit"] == "fraction" else "percentage points"


def _cell(value: float) -> str:
    return f"{value:.4f}"


def scores_table(found: dict[str, Any], title: str = "DD-Ranking's scores") -> Table:
    """The four scores, then every accuracy they used with its source."""
    table = Table(title=f"{title} ({found['convention_label']})", title_justify="left")
    table.add_column("score / accuracy")
    table.add_column("value", justify="right")
    table.add_column("lr", justify="right")
    table.add_column("source")
    for key in scores.SCORE_KEYS:
        table.add_row(f"[bold]{key.upper()}[/]", f"[bold]{_cell(found[key])}[/]", "", "")
    table.add_section()
    for name, measured in found["accuracies"].items():
        lr = "per run" if measured["lr"] is None else f"{measured['lr']:g}"
        source = measured["source"] + (f"; {measured['note']}" if "note" in measured else "")
        table.add_row(name, f"{100 * measured['accuracy']:.2f} %", lr, source)
    return table


def print_scores(found: dict[str, Any] | None) -> None:
    """The scores' table and what HLR/IOR are measured in (nothing when ``found`` is None)."""
    if not found:
        return
    out.print(scores_table(found))
    line(
        out,
        f"HLR, IOR in {unit_text(found)}; LRS weight {found['weight']:g}, ARS γ "
        f"{found['gamma']:g}; records: {found['accuracies']['set']['records']}",
    )


def run_scores(
    summary: Any, request: ScoresRequest | None, engine_options: dict[str, Any], device: Any,
    display: Any, world: Any,
) -> dict[str, Any]:  # fmt: skip
    """``ddpp run --scores``: the scores of the run's set under its plan (its evaluation's
    records reused), as ``{"scores": …}``; ``{}`` without ``--scores``."""
    if request is None:
        return {}
    if world.distributed:
        raise DdppError("--scores runs in one process; start it without torchrun.")
    from ddpp_cli.engine import distilled, layout

    plan = summary.plan
    where = scores_jobs.Where(
        engine_options["data_dir"], engine_options["download"], device,
        engine_options["parallel"], ScoresDisplay(display.progress, None),
    )  # fmt: skip
    with display.progress:
        found = scores_jobs.score_set_file(
            distilled.load(summary.set_path), plan.evaluation, request,
            records=summary.folder / layout.RECORDS_DIRNAME,
            train_subset=plan.buffer.train_subset, test_subset=plan.test_subset, where=where,
        )  # fmt: skip
    return {"scores": found.to_json()}
