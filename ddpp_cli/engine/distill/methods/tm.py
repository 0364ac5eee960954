"""tm: trajectory matching (MTT) with DDPP's parameter pruning, the default method: its record.

It matches expert trajectories from a buffer (``ddpp buffer``), learns the student's step size
α with the images, and is the only method with ZCA, torchrun and the memory-saving unroll
(docs/distill.md). Its iteration is :class:`~ddpp_cli.engine.distill.step.MatchingStep`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ddpp_cli.engine import autolr, presets
from ddpp_cli.engine.distill.methods.registry import CompareRow, MethodInfo
from ddpp_cli.engine.distill.state import GENERATORS
from ddpp_cli.engine.distill.step import MatchingStep
from ddpp_cli.engine.errors import DdppError

if TYPE_CHECKING:
    from ddpp_cli.engine.distill.config import DistillConfig
    from ddpp_cli.engine.distill.setup import RunSetup

EPS = 0.1  # the paper's pruning threshold ε, where none is given
# Its own options, in the order they are checked ("buffer", "auto_lr": the command's options).
SETTINGS = (
    "syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "lr_lr", "lr_teacher", "eps",
    "unroll", "unroll_budget", "amp", "compile", "channels_last", "buffer", "auto_lr",
    "labels", "lr_labels", "min_start_epoch", "max_start_from", "expansion_end",
    "skip_threshold",
)  # fmt: skip
LABEL_MODES = ("hard", "teacher", "learned")  # docs/distill.md, Labels (DATM)


def preset(dataset: str, ipc: int, derive: bool) -> dict[str, Any]:
    """The MTT/DDPP table (engine/presets.py); its ``zca`` only picks the default buffer."""
    return presets.resolve(dataset, ipc, derive=derive)


def check(config: DistillConfig) -> None:
    """ε in [0, 1), the unroll's lengths (N, M, T⁺) at least 1, and DATM's settings
    (:func:`check_datm`)."""
    if not 0.0 <= config.eps < 1.0:
        raise DdppError(
            f"--eps must be in [0, 1) (got {config.eps}); 0 turns pruning off, 0.1 is the "
            "paper's value."
        )
    for name in ("syn_steps", "expert_epochs", "max_start_epoch"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DdppError(f"--{name.replace('_', '-')} must be an integer ≥ 1 (got {value}).")
    check_datm(config)


def check_datm(config: DistillConfig) -> None:
    """--labels one of :data:`LABEL_MODES`; --lr-labels positive with learned labels only (DATM's
    lr_y where not given: :func:`presets.datm_lr_labels`); the window T⁻ ≤ T⁻⁺ ≤ T⁺ with its
    length in iterations; the skip threshold positive."""
    if config.labels not in LABEL_MODES:
        raise DdppError(
            f"--labels must be one of: {', '.join(LABEL_MODES)} (got '{config.labels}')."
        )
    if config.labels != "hard" and config.init != "real":
        raise DdppError(
            f"--labels {config.labels} starts from real images the experts classify correctly "
            "(DATM); drop --init noise."
        )
    if config.labels != "learned" and config.lr_labels is not None:
        raise DdppError("--lr-labels applies to --labels learned only; drop it.")
    if config.labels == "learned" and config.lr_labels is None:  # DATM's lr_y (a fill-in)
        object.__setattr__(config, "lr_labels", presets.datm_lr_labels(config.dataset, config.ipc))
    if config.lr_labels is not None and not (
        math.isfinite(config.lr_labels) and config.lr_labels > 0
    ):
        raise DdppError(f"--lr-labels must be a positive number (got {config.lr_labels}).")
    low = config.min_start_epoch
    if low is not None and (_not_count(low, 0) or low >= config.max_start_epoch):
        raise DdppError(
            f"--min-start-epoch must be an integer in [0, --max-start-epoch) (got {low})."
        )
    current, end = config.max_start_from, config.expansion_end
    if (current is None) != (end is None):
        raise DdppError(
            "--max-start-from and --expansion-end go together (DATM's window: the upper "
            "start epoch grows from the first to --max-start-epoch over the second's iterations)."
        )
    if current is not None and (
        _not_count(current, (low or 0) + 1) or current > config.max_start_epoch
    ):
        raise DdppError(
            "--max-start-from must be an integer in (--min-start-epoch, "
            f"--max-start-epoch] (got {current})."
        )
    if end is not None and _not_count(end, 1):
        raise DdppError(f"--expansion-end must be an integer ≥ 1 (got {end}).")
    threshold = config.skip_threshold
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        raise DdppError(f"--skip-threshold must be a positive number (got {threshold}).")


def _not_count(value: object, minimum: int) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or value < minimum


def step(setup: RunSetup) -> MatchingStep:
    return MatchingStep(
        setup.config, setup.student, setup.expert_paths, setup.matching_labels(),
        setup.prepared.image_size, setup.device,
    )  # fmt: skip


def lighter_unroll(config: DistillConfig) -> str:
    """``--unroll memory``, else no kept step graphs; "" when every step is recomputed."""
    if config.unroll == "graph":
        return " --unroll memory"
    return " --unroll-budget 0" if config.unroll_budget > 0 else ""


def divergence(config: DistillConfig, record: dict[str, Any], lr: float | None) -> tuple[str, str]:
    """The expert and start epoch that diverged, and the step size to change."""
    where = f"expert {record['expert']}, start epoch {record['start_epoch']}"
    return where, autolr.divergence_advice(lr, config)


TM = MethodInfo(
    name="tm",
    label="DDPP",
    summary="trajectory matching (MTT; DDPP with --eps > 0)",
    doc="docs/distill.md, The algorithm",
    preset=preset,
    preset_source="MTT/DDPP papers (docs/distill.md, Presets)",
    paper_budget=5000,
    step=step,
    settings=SETTINGS,
    preset_only=("zca",),
    needs_buffer=True,
    learns_step_size=True,
    allows_zca=True,
    distributed=True,
    generators=GENERATORS,
    unset={"eps": EPS, "labels": "hard"},
    check=check,
    lighter_unroll=lighter_unroll,
    divergence=divergence,
    compare_rows=(
        CompareRow("mtt", "MTT", {"eps": 0.0}),
        CompareRow("ddpp", "DDPP"),
        CompareRow("ddpp-teacher", "DDPP, teacher soft labels", {"labels": "teacher"}),
        CompareRow("ddpp-learned", "DDPP, learned soft labels", {"labels": "learned"}),
    ),
)
