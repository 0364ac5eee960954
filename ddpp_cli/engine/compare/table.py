"""The table of ``ddpp run --compare``: each row's result (:class:`RowResult`), the whole
comparison (:class:`CompareSummary`, ``compare.json``) and its Markdown (``compare.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddpp_cli import __version__
from ddpp_cli.engine import evaluate
from ddpp_cli.engine.compare.rows import ROWS, Budget
from ddpp_cli.engine.evaluate import HARD_LABELS_TEXT
from ddpp_cli.engine.layout import COMPARE_JSON_NAME as JSON_NAME
from ddpp_cli.engine.layout import COMPARE_MARKDOWN_NAME as MARKDOWN_NAME
from ddpp_cli.engine.model_selection import BEST_TEST_LABEL, VALIDATION_LABEL
from ddpp_cli.engine.pipeline import RunPlan
from ddpp_cli.engine.published import UNCONFIRMED_NOTE, Reference

FORMAT = "ddpp.compare/1"


@dataclass(frozen=True)
class RowResult:
    """One row of the table."""

    row: str
    result: evaluate.EvalResult
    seconds: float  # making the set + evaluating it, when it was done
    reused: bool  # taken from an earlier run's row.json
    set_path: Path | None
    folder: Path
    budget: Budget
    reference: Reference | None
    scores: dict[str, Any] | None = None  # --scores: engine/scores_gather.SetScores.to_json()

    @property
    def label(self) -> str:
        return ROWS[self.row].label

    def to_json(self) -> dict[str, Any]:
        cache = self.result.protocol.get("cache")  # the whole-set row's cache folder
        return {
            "row": self.row,
            "method": self.label,
            "mean": 100 * self.result.mean,
            "std": 100 * self.result.std,
            "runs": len(self.result.accuracies),
            "seconds": self.seconds,
            "reused": self.reused,
            "set": None if self.set_path is None else str(self.set_path),
            "folder": str(self.folder),
            **({} if cache is None else {"cache": cache}),
            "budget": self.budget.to_json(),
            "reference": None if self.reference is None else asdict(self.reference),
            "evaluation": self.result.to_json(),
            **({} if self.scores is None else {"scores": self.scores}),
        }


@dataclass(frozen=True)
class CompareSummary:
    folder: Path
    plan: RunPlan
    data_folder: Path
    buffer: Path | None
    rows: tuple[RowResult, ...]

    @property
    def markdown_path(self) -> Path:
        return self.folder / MARKDOWN_NAME

    @property
    def json_path(self) -> Path:
        return self.folder / JSON_NAME

    def to_json(self) -> dict[str, Any]:
        d = self.plan.distill
        return {
            "format": FORMAT,
            "ddpp_version": __version__,
            "dataset": d.dataset,
            "ipc": d.ipc,
            "profile": self.plan.profile,
            "folder": str(self.folder),
            "data_folder": str(self.data_folder),
            "buffer": None if self.buffer is None else str(self.buffer),
            "protocol": {**asdict(self.plan.evaluation), "test_subset": self.plan.test_subset},
            "rows": [row.to_json() for row in self.rows],
            "plan": self.plan.to_json(),
        }


def protocol_text(summary: CompareSummary) -> str:
    """The one evaluation protocol of every row, in one sentence."""
    e, rows = summary.plan.evaluation, summary.rows
    protocol = rows[0].result.protocol if rows else {}
    kinds = sorted({str(row.result.protocol.get("preprocessing", "?")) for row in rows})
    test = protocol.get("test_size", summary.plan.test_subset or "all")
    return (
        f"{e.arch}, {e.epochs} epochs, SGD momentum {e.momentum:g}, weight decay "
        f"{e.weight_decay:g}, batch {e.batch_size}, lr the set's learned one (else "
        f"{evaluate.DEFAULT_LR:g}) × {evaluate.LR_DECAY:g} at half, DSA "
        f"{'off' if e.dsa_strategy == 'none' else 'on'}; runs from seed {e.seed}; the same "
        f"{test} test images ({', '.join(kinds)}) for every row; {labels_clause(rows)}; ± is "
        "the population std"
    )


def labels_clause(rows: Sequence[RowResult]) -> str:
    """Which labels trained each row's networks: "hard labels" when every row's did, else the
    rows' own labels (each row with label vectors names them, the others are hard)."""
    texts = {str(row.result.protocol.get("label_text", HARD_LABELS_TEXT)) for row in rows}
    if texts <= {HARD_LABELS_TEXT}:
        return f"trained on {HARD_LABELS_TEXT}"
    return f"trained on each set's own labels ({HARD_LABELS_TEXT} where the row names none)"


def time_text(row: RowResult) -> str:
    return f"reused ({row.seconds:.0f} s)" if row.reused else f"{row.seconds:.0f} s"


TEST_SELECTED_MARK = " †"
TEST_SELECTED_NOTE = (
    f"{BEST_TEST_LABEL}: the set with the best mean test accuracy over its evaluation points "
    f"(--selection best-test); the other rows: {VALIDATION_LABEL}"
)


def test_selected(row: RowResult) -> bool:
    """Whether the row's set was chosen on the test split (``--selection best-test``)."""
    return row.result.selection == BEST_TEST_LABEL


def markdown(summary: CompareSummary) -> str:
    """``compare.md``: the table (mean ± std in %, runs, time, set, budget, published), then the
    protocol."""
    d = summary.plan.distill
    lines = [
        f"# ddpp run --compare: {d.dataset}, IPC {d.ipc}, profile {summary.plan.profile}",
        "",
        "| method | test accuracy (%) | runs | time | set | budget | published (%) |"
        + (" HLR | IOR | LRS | ARS |" if has_scores(summary) else ""),
        "|---|---|---|---|---|---|---|" + ("---|" * 4 if has_scores(summary) else ""),
    ]
    for row in summary.rows:
        cell = "–" if row.reference is None else row.reference.text()
        where = "–" if row.set_path is None else f"`{row.set_path}`"
        label = row.label + (TEST_SELECTED_MARK if test_selected(row) else "")
        lines.append(
            f"| {label} | {row.result.mean_std_text()} | {len(row.result.accuracies)} | "
            f"{time_text(row)} | {where} | {row.budget.text()} | {cell} |"
            + ("".join(f" {text} |" for text in score_cells(row)) if has_scores(summary) else "")
        )
    if any(test_selected(row) for row in summary.rows):
        lines += ["", f"{TEST_SELECTED_MARK.strip()} {TEST_SELECTED_NOTE}."]
    lines += ["", f"Protocol: {protocol_text(summary)}."]
    if has_scores(summary):
        lines.append(f"Scores: {scores_text(summary)}.")
    if summary.buffer is not None:
        lines.append(f"Buffer: `{summary.buffer}`.")
    sources = published_sources(summary)
    if sources:
        lines += ["", f"{PUBLISHED_HEADING}:", "", *(f"- {source}" for source in sources)]
        if any(not row.reference.confirmed for row in summary.rows if row.reference):
            lines += ["", f"{UNCONFIRMED_NOTE}."]
    return "\n".join(lines) + "\n"


PUBLISHED_HEADING = "Published (%, ConvNet-3, other protocols; checked in docs/published.md)"


def published_sources(summary: CompareSummary) -> list[str]:
    """One line per row with a published number: its label and sources, e.g.
    ``DC: DatasetCondensation readme; std: …``."""
    return [f"{row.label}: {row.reference.source}" for row in summary.rows if row.reference]


SCORE_KEYS = ("hlr", "ior", "lrs", "ars")


def has_scores(summary: CompareSummary) -> bool:
    return any(row.scores for row in summary.rows)


def score_cells(row: RowResult) -> list[str]:
    """HLR, IOR, LRS, ARS of a row as text (HLR and IOR in the convention's unit); "–" when the
    row has none (the whole-set row)."""
    if not row.scores:
        return ["–"] * len(SCORE_KEYS)
    return [f"{row.scores[key]:.3f}" for key in SCORE_KEYS]


def scores_text(summary: CompareSummary) -> str:
    """The scores' convention and weights, in one sentence."""
    scores = next(row.scores for row in summary.rows if row.scores)
    unit = "fractions" if scores["unit"] == "fraction" else "percentage points"
    return (
        f"DD-Ranking's HLR, IOR, LRS, ARS; convention: {scores['convention_label']}; HLR, IOR "
        f"in {unit}; LRS weight {scores['weight']:g}, ARS γ {scores['gamma']:g}; every "
        "accuracy used, with its source, is in compare.json's rows' scores"
    )
