"""The rows of ``ddpp run --compare`` (:data:`ROWS`), parsing ``--compare`` and
``--compare-budget``, each row's budget and cuts (:class:`Budget`), and the configs a row runs:
its coreset, matching or trajectory distillation settings.

The distillation rows come from the method registry (``distill.methods``: each method's rows,
label, paper budget and source). The quick profile cuts each method to a CPU budget: fewer
iterations (forgetting: epochs) and, for the matching methods, the cuts of its record
(``quick_cuts``: fewer real images per step, CAFE's loops capped), resolved as a profile; a
row's :class:`Budget` lists every cut next to the paper's value. The ``full`` row (the whole
training set) counts the protocol's epochs and shows its training images as a cut.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine.distill.methods import compare_rows
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig
from ddpp_cli.engine.pipeline import RunPlan

KINDS = ("coreset", "matching", "trajectory", "full")


@dataclass(frozen=True)
class RowInfo:
    """One row of the table: what it is, and what its budget counts."""

    label: str  # as the paper's table names it
    kind: str  # one of KINDS
    unit: str | None = None  # what the budget counts ("iterations", "epochs"); None: no budget
    paper: int | None = None  # the method's own default
    quick: int | None = None  # the quick profile's CPU budget (None: the plan's iterations)
    paper_source: str = ""
    method: str | None = None  # the distillation method it runs (None: a coreset)
    changes: Mapping[str, Any] = field(default_factory=dict)  # its settings beyond the method's
    # The paper profile's budget read from the plan (None: ``paper``), and the row's cuts.
    plan_budget: Callable[[RunPlan], int] | None = None
    cuts: Callable[[RunPlan], tuple[Cut, ...]] | None = None

    @property
    def needs_buffer(self) -> bool:
        """Whether the row distills from the run's buffer."""
        return self.method is not None and distill_engine.get_method(self.method).needs_buffer


def method_rows() -> dict[str, RowInfo]:
    """The rows of the registered methods (:func:`distill.methods.compare_rows`): the matching
    methods, then those from a buffer (the paper's order)."""
    rows = []
    for name in distill_engine.list_methods():
        info = distill_engine.get_method(name)
        kind = "trajectory" if info.needs_buffer else "matching"
        for row in compare_rows(info):
            rows.append(
                (row.name, RowInfo(
                    row.label, kind, "iterations", info.paper_budget, info.quick_budget,
                    info.preset_source, method=name, changes=dict(row.changes),
                ))
            )  # fmt: skip
    return dict(sorted(rows, key=lambda item: KINDS.index(item[1].kind)))


WHOLE_SPLIT = "all"  # the paper's training images for the full row: the whole split


def _plan_epochs(plan: RunPlan) -> int:
    """The plan's evaluation epochs: the whole-set row's budget under ``--profile paper``."""
    return plan.evaluation.epochs


def _train_images_cut(plan: RunPlan) -> tuple[Cut, ...]:
    """The whole-set row's training images: the buffer's subset (the quick profile's 5000), a
    cut against the whole training split the paper trains on."""
    subset = plan.buffer.train_subset
    return () if subset is None else (Cut("train images", subset, WHOLE_SPLIT),)


ROWS: dict[str, RowInfo] = {
    "random": RowInfo("Random", "coreset"),
    "herding": RowInfo("Herding", "coreset"),
    "forgetting": RowInfo("Forgetting", "coreset", "epochs", 200, 10, "Toneva et al. 2019"),
    # The same counts, never-learned examples ranked last (DeepCore's convention; docs/methods.md)
    "forgetting-deepcore": RowInfo(
        "Forgetting (DeepCore)", "coreset", "epochs", 200, 10, "Toneva et al. 2019"
    ),
    **method_rows(),
    # The whole training set under the protocol (baselines.full; its runs cached in the data
    # home); paper: the protocol's epochs on every training image.
    "full": RowInfo(
        "Full dataset",
        "full",
        "epochs",
        EvalConfig().epochs,
        5,
        "the evaluation protocol",
        plan_budget=_plan_epochs,
        cuts=_train_images_cut,
    ),
}
# The paper's Table I order; ``--compare all`` asks for these.
TABLE_I = (
    "random", "forgetting", "herding", "dsa", "dm", "cafe-dsa", "mtt", "ddpp", "full",
)  # fmt: skip


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
# The settings of a matching row that a profile may cut (a method's ``quick_cuts``), and the
# papers' values they are shown against: the method's preset batch_real; CAFE's reference loops
# have no cap (ddpp's preset caps them at 100, which the paper profile therefore shows as a cut).
CUT_SETTINGS = (
    "batch_real", "max_image_steps", "max_inner_epochs", "ensemble", "kernel_width", "learn_labels",
)  # fmt: skip
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
        elif info.quick is None:  # a buffer method's row: the plan's iterations
            origin = plan.origin.get("iterations", "default")
            budgets[row] = Budget(info.unit, plan.distill.iterations, info.paper, origin)
        elif quick:
            budgets[row] = Budget(info.unit, info.quick, info.paper, "profile")
        elif info.plan_budget is not None:  # the whole set: the plan's evaluation epochs
            origin = plan.origin.get("epochs", "default")
            budgets[row] = Budget(info.unit, info.plan_budget(plan), info.paper, origin)
        else:
            budgets[row] = Budget(info.unit, info.paper, info.paper, "paper")
        if info.method is not None:
            config = row_config(plan, row, int(budgets[row].value or 0))
            budgets[row] = replace(budgets[row], cuts=matching_cuts(config))
        elif info.cuts is not None:
            budgets[row] = replace(budgets[row], cuts=info.cuts(plan))
    return budgets


def matching_cuts(config: distill_engine.DistillConfig) -> tuple[Cut, ...]:
    """The settings of a distillation row's config (:data:`CUT_SETTINGS`) that differ from the
    paper's, in that order (none for a buffer method's row: it has none of them)."""
    cuts, preset = [], None
    for name in CUT_SETTINGS:
        value = getattr(config, name)
        if value is None:
            continue
        if preset is None:
            preset = distill_engine.method_preset(config.method, config.dataset, config.ipc)
        paper = PAPER_LOOP_CAPS.get(name) or preset[name]
        if value != paper:
            cuts.append(Cut(name, value, paper))
    return tuple(cuts)


# --------------------------------------------------------------------- what a row distills with


def row_config(plan: RunPlan, row: str, iterations: int) -> distill_engine.DistillConfig:
    """The distillation of a method's row: from the buffer, the plan's own
    (:func:`trajectory_config`); else the method's resolution (:func:`matching_config`)."""
    if ROWS[row].needs_buffer:
        return trajectory_config(plan, row, iterations)
    return matching_config(plan, row, iterations)


def trajectory_config(plan: RunPlan, row: str, iterations: int) -> distill_engine.DistillConfig:
    """The distillation of a trajectory row: the plan's, with the row's changes (``mtt``: ε 0)."""
    return replace(plan.distill, iterations=iterations, **ROWS[row].changes)


def matching_config(plan: RunPlan, row: str, iterations: int) -> distill_engine.DistillConfig:
    """The distillation of a matching row (dc, dsa, dm, cafe), resolved as ``ddpp distill``
    resolves a run: the method's preset (lr_img, loops, init), then the quick profile's cuts
    (its record's ``quick_cuts``), then the row's budget and the plan's data, seed, validation
    and checkpoint settings (the method's own settings and the preset's fields are not taken
    from the plan)."""
    method = ROWS[row].method
    info = distill_engine.get_method(method)
    kept = {f.name for f in fields(plan.distill)} - {
        *distill_engine.METHOD_SETTINGS,
        *distill_engine.METHOD_PRESET_FIELDS,
        "method",
        "zca",
    }
    given = {name: getattr(plan.distill, name) for name in sorted(kept)}
    given |= {"method": method, "iterations": iterations, "test_runs": 0}
    given["channels"] = plan.buffer.channels  # the data the buffer's rows see (None: not given)
    profile = info.quick_cuts if plan.profile == "quick" else None
    return distill_engine.resolve(given, None, profile=profile).config


def row_origin(plan: RunPlan, row: str) -> dict[str, str]:
    """Where each setting of ``row``'s distillation comes from, for its settings table: the
    plan's origins, the row's budget, and for a matching row its method ("row"), the method's
    preset and the quick profile's cuts."""
    origin = {**plan.origin, "iterations": "row budget"}
    info = ROWS[row]
    if info.needs_buffer:
        return origin | {name: f"{row} row" for name in info.changes}
    if info.method is None:
        return origin
    method = distill_engine.get_method(info.method)
    preset = distill_engine.method_preset(method.name, plan.distill.dataset, plan.distill.ipc)
    origin |= {name: "preset" for name in preset if name != "iterations"}
    if plan.profile == "quick":
        origin |= {name: "profile (CPU cut)" for name in method.quick_cuts}
    return origin | {"method": "row"}
