"""``ddpp run --compare``: the paper's Table I for one dataset and IPC, every row under ONE
evaluation protocol (issue 16).

Each row makes (or reuses) a set and evaluates it with the plan's :class:`EvalConfig`: the same
architecture, epochs, lr rule, DSA, seeds and test images (the plan's ``test_subset``) for every
row; the coresets use the buffer's ZCA when the run whitens, so that the preprocessing is the
one the trajectory rows were distilled in.

- ``random``, ``herding``, ``forgetting``: coresets of :mod:`~ddpp_cli.engine.baselines`
  (``prepare_baseline`` → ``evaluate_baseline``);
- ``dc``, ``dsa``, ``dm``, ``cafe``: :func:`engine.distill.distill` with
  ``DistillConfig.method`` set to the row (no buffer: these methods match real images);
- ``mtt``, ``ddpp``: trajectory matching from the run's one buffer, ε = 0 and the plan's ε.

Each row's budget (iterations, epochs) comes from the profile (:class:`RowInfo`) and can be
overridden (:func:`parse_budgets`); the table says it and the method's paper default.

Files: ``RUN/compare.md`` and ``RUN/compare.json`` (the table), and per row
``RUN/compare/<row>/``: ``row.json`` (settings, then the result), the set
(``set.safetensors`` for a coreset, a distillation run folder ``run/`` otherwise) and
``evaluations/`` (the evaluation records). A rerun reuses a finished row whose settings match;
a row of other settings is never overwritten (a Notice, and the row goes to ``<row>-2``, …); an
unfinished row continues: its distillation from the checkpoint, its evaluation from the records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs
import torch

from ddpp_cli import __version__
from ddpp_cli.engine import baselines, data, distilled, evaluate, store, trajectory
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice
from ddpp_cli.engine.pipeline import RunPlan, choose_buffer
from ddpp_cli.engine.published import UNCONFIRMED_NOTE, Reference, reference

FORMAT = "ddpp.compare/1"
ROW_FORMAT = "ddpp.compare-row/1"
MARKDOWN_NAME = "compare.md"
JSON_NAME = "compare.json"
ROWS_DIRNAME = "compare"
ROW_NAME = "row.json"
SET_NAME = "set.safetensors"  # a coreset row's set (run 0's coreset)
RUN_DIRNAME = "run"  # a distilled row's run folder
KINDS = ("coreset", "matching", "trajectory")

EventCallback = Callable[[object], None]


@dataclass(frozen=True)
class RowInfo:
    """One row of the table: what it is, and what its budget counts."""

    label: str  # as the paper's table names it
    kind: str  # one of KINDS
    unit: str | None = None  # what the budget counts ("iterations", "epochs"); None: no budget
    paper: int | None = None  # the method's own default
    quick: int | None = None  # the quick profile's CPU budget (None: the plan's iterations)
    paper_source: str = ""


ROWS: dict[str, RowInfo] = {
    "random": RowInfo("Random", "coreset"),
    "herding": RowInfo("Herding", "coreset"),
    "forgetting": RowInfo("Forgetting", "coreset", "epochs", 200, 10, "Toneva et al. 2019"),
    "dc": RowInfo("DC", "matching", "iterations", 1000, 40, "DatasetCondensation main.py"),
    "dsa": RowInfo("DSA", "matching", "iterations", 1000, 100, "DatasetCondensation main.py"),
    "dm": RowInfo("DM", "matching", "iterations", 20000, 200, "DatasetCondensation main_DM.py"),
    "cafe": RowInfo("CAFE", "matching", "iterations", 2000, 4, "CAFE distill.py"),
    "mtt": RowInfo("MTT", "trajectory", "iterations", 5000, None, "SPEC §6"),
    "ddpp": RowInfo("DDPP", "trajectory", "iterations", 5000, None, "SPEC §6"),
}
# The paper's Table I order; ``--compare all`` asks for these.
TABLE_I = ("random", "herding", "forgetting", "dsa", "dm", "cafe", "mtt", "ddpp")

# EXTENSION POINT (issue 16, the coresets branch): the BaselineConfig field a coreset row's budget
# goes to, and the field that takes the run's buffer (herding's expert features, forgetting).
# A budget whose field BaselineConfig lacks is an error (the table must never show a budget that
# was not applied); the buffer is passed only where the field exists.
CORESET_BUDGET_FIELDS = {"forgetting": "forgetting_epochs"}
CORESET_BUFFER_FIELD = "buffer"


# ---------------------------------------------------------------------------- rows and budgets


def parse_rows(text: str) -> tuple[str, ...]:
    """``"random,herding,…"`` (or ``"all"``: :data:`TABLE_I`) as row names in the order given;
    DdppError names an unknown or repeated row and the valid ones."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return TABLE_I
    if not names:
        raise DdppError(f"--compare needs rows; choose from: {', '.join(ROWS)} (or all).")
    for name in names:
        if name not in ROWS:
            raise DdppError(
                f"unknown --compare row '{name}'; choose from: {', '.join(ROWS)} (or all)."
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DdppError(f"--compare names {', '.join(repeated)} more than once; name each once.")
    return tuple(names)


def parse_budgets(text: str | None) -> dict[str, int]:
    """``"dsa=200,dm=400"`` → ``{"dsa": 200, "dm": 400}``; DdppError for a malformed entry, an
    unknown row, a row without a budget or a count below 1."""
    budgets: dict[str, int] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        name, sep, value = (part.strip() for part in entry.partition("="))
        name = name.lower()
        if not sep or not value.lstrip("-").isdigit():
            raise DdppError(
                f"--compare-budget entry '{entry.strip()}' is not ROW=COUNT (e.g. dsa=200,dm=400)."
            )
        if name not in ROWS:
            raise DdppError(
                f"unknown --compare-budget row '{name}'; choose from: {', '.join(ROWS)}."
            )
        if ROWS[name].unit is None:
            raise DdppError(f"the {name} row has no budget to set; drop it from --compare-budget.")
        if int(value) < 1:
            raise DdppError(f"--compare-budget {name}={value}: the budget must be at least 1.")
        budgets[name] = int(value)
    return budgets


@dataclass(frozen=True)
class Cut:
    """A setting a row runs below its paper's value besides its budget, e.g. ``batch_real`` 64
    where the paper draws 256 real images per class and step."""

    setting: str
    value: int
    paper: int | str  # the paper's value; UNCAPPED where the paper's loop has no cap


UNCAPPED = "no cap"
# The settings of a matching row that a profile may cut (QUICK_MATCHING), and the papers' values
# they are shown against: METHOD_PRESETS' batch_real; CAFE's reference loops have no cap (ddpp's
# preset caps them at 100, which the paper profile therefore shows as a cut too).
CUT_SETTINGS = ("batch_real", "max_image_steps", "max_inner_epochs")
PAPER_LOOP_CAPS = {"max_image_steps": UNCAPPED, "max_inner_epochs": UNCAPPED}


@dataclass(frozen=True)
class Budget:
    """A row's budget: ``value`` ``unit`` (None: the row has none), the method's paper default,
    where the value came from ("user", "profile" or "paper"), and the row's other cuts."""

    unit: str | None
    value: int | None
    paper: int | None
    origin: str
    cuts: tuple[Cut, ...] = ()

    def text(self) -> str:
        """E.g. "100 iterations, batch_real 64 (paper 1000, 256)"."""
        if self.unit is None:
            return "–"
        ours = [f"{self.value} {self.unit}", *(f"{cut.setting} {cut.value}" for cut in self.cuts)]
        if self.paper is None:
            return ", ".join(ours)
        papers = [str(self.paper), *(str(cut.paper) for cut in self.cuts)]
        return f"{', '.join(ours)} (paper {', '.join(papers)})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def quick_budgets_text() -> str:
    """The quick profile's budgets in words: "forgetting 10 epochs, dc 40, …, cafe 4
    iterations"."""
    parts, rows = [], [(row, info) for row, info in ROWS.items() if info.quick is not None]
    for number, (row, info) in enumerate(rows):
        last = number + 1 == len(rows) or rows[number + 1][1].unit != info.unit
        parts.append(f"{row} {info.quick}{f' {info.unit}' if last else ''}")
    return ", ".join(parts)


def row_budgets(
    plan: RunPlan, rows: Sequence[str], given: Mapping[str, int] | None = None
) -> dict[str, Budget]:
    """Each row's budget: ``given`` (``--compare-budget``), else the profile's. The quick
    profile cuts every method to a CPU budget (:class:`RowInfo` ``quick``); the paper profile
    runs each method's paper default; the trajectory rows take the plan's iterations."""
    given = dict(given or {})
    unwanted = sorted(set(given) - set(rows))
    if unwanted:
        raise DdppError(
            f"--compare-budget names {', '.join(unwanted)}, not among the --compare rows."
        )
    quick = plan.profile == "quick"
    budgets = {}
    for row in rows:
        info = ROWS[row]
        if info.unit is None:
            budgets[row] = Budget(None, None, None, "–")
        elif row in given:
            budgets[row] = Budget(info.unit, given[row], info.paper, "user")
        elif info.kind == "trajectory":
            origin = plan.origin.get("iterations", "default")
            budgets[row] = Budget(info.unit, plan.distill.iterations, info.paper, origin)
        elif quick:
            budgets[row] = Budget(info.unit, info.quick, info.paper, "profile")
        else:
            budgets[row] = Budget(info.unit, info.paper, info.paper, "paper")
        if info.kind == "matching":
            config = matching_config(plan, row, int(budgets[row].value or 0))
            budgets[row] = replace(budgets[row], cuts=matching_cuts(config))
    return budgets


def matching_cuts(config: distill_engine.DistillConfig) -> tuple[Cut, ...]:
    """The settings of a matching row's config (:data:`CUT_SETTINGS`) that differ from the
    paper's, in that order."""
    cuts = []
    for name in CUT_SETTINGS:
        value = getattr(config, name)
        if value is None:
            continue
        paper = PAPER_LOOP_CAPS.get(name) or distill_engine.METHOD_PRESETS[config.method][name]
        if value != paper:
            cuts.append(Cut(name, value, paper))
    return tuple(cuts)


# ------------------------------------------------------------------------------------ events


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


# ------------------------------------------------------------------------------------ results


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

    @property
    def label(self) -> str:
        return ROWS[self.row].label

    def to_json(self) -> dict[str, Any]:
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
            "budget": self.budget.to_json(),
            "reference": None if self.reference is None else asdict(self.reference),
            "evaluation": self.result.to_json(),
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
        f"{test} test images ({', '.join(kinds)}) for every row; ± is the population std"
    )


def time_text(row: RowResult) -> str:
    return f"reused ({row.seconds:.0f} s)" if row.reused else f"{row.seconds:.0f} s"


def markdown(summary: CompareSummary) -> str:
    """``compare.md``: the table (mean ± std in %, runs, time, set, budget, published), then the
    protocol."""
    d = summary.plan.distill
    lines = [
        f"# ddpp run --compare: {d.dataset}, IPC {d.ipc}, profile {summary.plan.profile}",
        "",
        "| method | test accuracy (%) | runs | time | set | budget | published (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary.rows:
        cell = "–" if row.reference is None else row.reference.text()
        where = "–" if row.set_path is None else f"`{row.set_path}`"
        lines.append(
            f"| {row.label} | {row.result.mean_std_text()} | {len(row.result.accuracies)} | "
            f"{time_text(row)} | {where} | {row.budget.text()} | {cell} |"
        )
    lines += ["", f"Protocol: {protocol_text(summary)}."]
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
    """ "DC: DatasetCondensation readme; std: …", one per row with a published number."""
    return [f"{row.label}: {row.reference.source}" for row in summary.rows if row.reference]


# ------------------------------------------------------------------------------ row runners


@dataclass(frozen=True)
class RowJob:
    """What a row runner gets: the row, the plan, the row's budget and folder, the run's buffer
    (None when no trajectory row asked for one) and where the data and the work are."""

    row: str
    plan: RunPlan
    budget: Budget
    folder: Path
    buffer: Path | None
    data_root: Path | None = None
    download: bool = True
    device: torch.device | str = "cpu"
    parallel: int = 1
    on_event: EventCallback | None = None

    @property
    def records(self) -> Path:
        """Where the row's evaluation keeps its finished runs."""
        return self.folder / evaluate.RECORDS_DIRNAME

    @property
    def sources(self) -> dict[str, Any]:
        return {"data_root": self.data_root, "download": self.download}

    @property
    def run(self) -> dict[str, Any]:
        return {"device": self.device, "parallel": self.parallel, "on_event": self.on_event}

    def evaluating(self) -> None:
        """Announce the evaluation (after the set is made)."""
        if self.on_event is not None:
            self.on_event(EvaluationStarted(self.row))


# A row runner makes the row's set in ``job.folder`` (resuming what a killed attempt left) and
# evaluates it under the plan's protocol: the result and the set file.
RowRunner = Callable[[RowJob], tuple[evaluate.EvalResult, Path | None]]


def coreset_config(job: RowJob) -> baselines.BaselineConfig:
    """The BaselineConfig of a coreset row: the run's data and seed, its budget and buffer in
    the fields :data:`CORESET_BUDGET_FIELDS` / :data:`CORESET_BUFFER_FIELD` name."""
    plan = job.plan
    known = {f.name for f in fields(baselines.BaselineConfig)}
    extra: dict[str, Any] = {}
    if job.budget.value is not None:
        name = CORESET_BUDGET_FIELDS.get(job.row)
        if name not in known:
            raise TypeError(
                f"BaselineConfig has no field for the {job.row} row's budget ({name!r}); "
                "update compare.CORESET_BUDGET_FIELDS"
            )
        extra[name] = job.budget.value
    if job.buffer is not None and CORESET_BUFFER_FIELD in known:
        extra[CORESET_BUFFER_FIELD] = job.buffer
    # The coresets are drawn from the data the buffer was trained on (the quick profile's
    # subset), which also keeps forgetting's training within its CPU budget.
    return baselines.BaselineConfig(
        method=job.row, dataset=plan.distill.dataset, ipc=plan.distill.ipc, zca=plan.buffer.zca,
        train_subset=plan.buffer.train_subset, image_size=plan.buffer.image_size,
        seed=plan.evaluation.seed, **extra,
    )  # fmt: skip


def run_coreset_row(job: RowJob) -> tuple[evaluate.EvalResult, Path | None]:
    """A coreset row: select, evaluate (run 0's coreset is saved as the row's set)."""
    plan = job.plan
    zca_file = None
    if plan.buffer.zca and job.buffer is not None:
        zca_file = job.buffer / trajectory.ZCA_NAME
    prepared = baselines.prepare_baseline(
        coreset_config(job), zca_path=zca_file, zca_out=job.folder / trajectory.ZCA_NAME,
        test_subset=plan.test_subset, eval_seed=plan.evaluation.seed, **job.sources,
    )  # fmt: skip
    job.evaluating()
    result, coreset = baselines.evaluate_baseline(
        prepared, plan.evaluation, records=job.records, **job.run
    )
    return result, distilled.save(job.folder / SET_NAME, coreset)


def trajectory_config(plan: RunPlan, row: str, iterations: int) -> distill_engine.DistillConfig:
    """The distillation of a trajectory row: the plan's, with ε 0 for ``mtt``."""
    config = replace(plan.distill, iterations=iterations)
    return replace(config, eps=0.0) if row == "mtt" else config


# The quick profile's CPU cuts of the matching methods beyond their iterations (docs/compare.md):
# fewer real images per class and step, and CAFE's loops capped.
QUICK_MATCHING: dict[str, dict[str, int]] = {
    "dc": {"batch_real": 64},
    "dsa": {"batch_real": 64},
    "dm": {"batch_real": 128},
    "cafe": {"batch_real": 64, "max_image_steps": 10, "max_inner_epochs": 10},
}


def matching_config(plan: RunPlan, row: str, iterations: int) -> distill_engine.DistillConfig:
    """The distillation of a matching row (dc, dsa, dm, cafe): ``DistillConfig.method`` set to
    the row, which brings the method's own preset (lr_img, loops, init), and the row's budget;
    the run's data, seed, validation and checkpoint settings are the plan's."""
    changes = QUICK_MATCHING.get(row, {}) if plan.profile == "quick" else {}
    return plan.distill.with_method(row, iterations=iterations, test_runs=0, **changes)


def run_distilled_row(job: RowJob) -> tuple[evaluate.EvalResult, Path | None]:
    """A trajectory or matching row: distill into ``ROW/run`` (resumed from its checkpoint),
    then evaluate its set (best.safetensors, else distilled.safetensors)."""
    plan, row, iterations = job.plan, job.row, int(job.budget.value or 0)
    folder = job.folder / RUN_DIRNAME
    if ROWS[row].kind == "trajectory":
        config, buffer = trajectory_config(plan, row, iterations), job.buffer
    else:
        config, buffer = matching_config(plan, row, iterations), None
    distill_engine.distill(
        config, folder, buffer=buffer, device=job.device, on_event=job.on_event, **job.sources
    )
    set_path = evaluate.find_set(folder)
    job.evaluating()
    result = evaluate.evaluate_set(
        distilled.load(set_path), plan.evaluation, test_subset=plan.test_subset,
        records=job.records, **job.sources, **job.run,
    )  # fmt: skip
    return result, set_path


RUNNERS: dict[str, RowRunner] = {
    "coreset": run_coreset_row,
    "matching": run_distilled_row,
    "trajectory": run_distilled_row,
}
DEFAULT_RUNNERS = (run_coreset_row, run_distilled_row)


def missing_rows(rows: Sequence[str], runners: Mapping[str, RowRunner] | None = None) -> list[str]:
    """The rows this build cannot make with their default runner: a coreset method that
    ``baselines.METHODS`` lacks, a matching method while ``DistillConfig`` has no ``method``."""
    has_methods = "method" in {f.name for f in fields(distill_engine.DistillConfig)}
    missing = []
    for row in rows:
        kind = ROWS[row].kind
        if (runners or {}).get(row) is not None or RUNNERS[kind] not in DEFAULT_RUNNERS:
            continue
        if (kind == "coreset" and row not in baselines.METHODS) or (
            kind == "matching" and not has_methods
        ):
            missing.append(row)
    return missing


def row_settings(job: RowJob) -> dict[str, Any]:
    """What a saved row must share with this one to be reused (JSON-normal)."""
    plan, info = job.plan, ROWS[job.row]
    settings: dict[str, Any] = {
        "row": job.row,
        "dataset": plan.distill.dataset,
        "ipc": plan.distill.ipc,
        "arch": plan.distill.arch,
        "seed": plan.distill.seed,
        "zca": plan.buffer.zca,
        "image_size": plan.buffer.image_size,
        "budget": job.budget.value,
        "evaluation": asdict(plan.evaluation),
        "test_subset": plan.test_subset,
    }
    if info.kind == "trajectory":
        config = trajectory_config(plan, job.row, int(job.budget.value or 0))
        settings |= {"distill": config.identity(), "buffer": str(job.buffer)}
    elif info.kind == "matching":
        d = plan.distill
        settings |= {"train_subset": d.train_subset, "val_size": d.val_size,
                     "eval_every": d.eval_every, "eval_runs": d.eval_runs,
                     "eval_epochs": d.eval_epochs}  # fmt: skip
    else:
        buffer = None if job.buffer is None else str(job.buffer)
        settings |= {"train_subset": plan.buffer.train_subset, "buffer": buffer}
    return json.loads(json.dumps(settings))


# ---------------------------------------------------------------------------------- the run


def default_compare_folder(plan: RunPlan, now: datetime | None = None) -> Path:
    """``<user data dir>/ddpp/runs/<dataset>-ipc<K>-compare-<timestamp>``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = f"{plan.distill.dataset}-ipc{plan.distill.ipc}-compare-{stamp}"
    return platformdirs.user_data_path("ddpp") / "runs" / name


def check_compare_folder(folder: Path) -> None:
    """DdppError when ``folder`` holds anything but an earlier comparison's files."""
    if folder.exists() and not folder.is_dir():
        raise DdppError(f"{folder} is a file, not a run folder; give a new or empty --out.")
    if not folder.is_dir():
        return
    own = {MARKDOWN_NAME, JSON_NAME, ROWS_DIRNAME}
    others = sorted(p.name for p in folder.iterdir() if p.name not in own and p.suffix != ".tmp")
    if others:
        listed = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        raise DdppError(
            f"{folder} holds other files ({listed}), not a ddpp comparison; give a new or empty "
            "--out so that nothing is mixed with them."
        )


def read_row(folder: Path) -> dict[str, Any] | None:
    """A row folder's ``row.json`` (None when absent or not readable as one)."""
    try:
        content = json.loads((folder / ROW_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != ROW_FORMAT:
        return None
    return content


def row_folder(
    base: Path, row: str, settings: dict[str, Any], emit: EventCallback
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
        result=evaluate.EvalResult(**recorded["evaluation"]),
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
    on_event: EventCallback | None = None,
    runners: Mapping[str, RowRunner] | None = None,
) -> CompareSummary:
    """Run or reuse every row of ``rows`` (in that order) under ``plan``'s evaluation protocol
    and write ``compare.md`` and ``compare.json`` in ``folder``.

    ``budgets`` overrides rows' budgets (:func:`row_budgets`); the run's buffer (``buffer``, or
    one found or trained as ``ddpp run`` does) is made only when a trajectory row asks for it.
    ``runners`` replaces the runner of a row by name (default: :data:`RUNNERS` by kind).
    Events of every step go to ``on_event``.
    """
    emit = on_event or (lambda event: None)
    rows = tuple(parse_rows(",".join(rows)))
    row_budget = row_budgets(plan, rows, budgets)
    missing = missing_rows(rows, runners)
    if missing:
        raise DdppError(
            f"this ddpp cannot make the {', '.join(missing)} row"
            f"{'s' if len(missing) > 1 else ''} yet; drop {'them' if len(missing) > 1 else 'it'} "
            "from --compare."
        )
    folder = Path(folder) if folder is not None else default_compare_folder(plan)
    check_compare_folder(folder)
    data_folder = data.source_folder(plan.distill.dataset, data_root)
    emit(CompareStarted(plan, rows, folder, data_folder))
    wants_buffer = any(ROWS[row].kind == "trajectory" for row in rows)
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
    summary = CompareSummary(folder, plan, data_folder, buffer_dir, tuple(results))
    store.atomic_write_text(summary.json_path, json.dumps(summary.to_json(), indent=2) + "\n")
    store.atomic_write_text(summary.markdown_path, markdown(summary))
    return summary


def _buffer_step(
    plan: RunPlan, buffer: Path | None, total: int, emit: EventCallback, sources: dict[str, Any],
    device: torch.device | str, parallel: int, on_event: EventCallback | None, source: Path,
) -> Path:  # fmt: skip
    """The one buffer the trajectory rows distill from, reused or trained as ``ddpp run`` does."""
    buffer_dir, reused = choose_buffer(plan, buffer, emit, source)
    started = time.perf_counter()
    if reused:
        emit(StepStarted("buffer", 1, total, f"reusing {buffer_dir}"))
    else:
        emit(StepStarted("buffer", 1, total, f"training into {buffer_dir}"))
        trajectory.train_buffer(
            plan.buffer, buffer_dir, device=device, parallel=parallel, on_event=on_event,
            **sources,
        )  # fmt: skip
    emit(StepFinished("buffer", time.perf_counter() - started, str(buffer_dir), reused))
    return buffer_dir


def _row_step(
    job: RowJob, runner: RowRunner, index: int, total: int, emit: EventCallback
) -> RowResult:
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
