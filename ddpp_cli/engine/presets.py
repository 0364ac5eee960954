"""tm's presets: the paper's hyperparameters per dataset and IPC (docs/distill.md, Presets).

``resolve(dataset, ipc)`` gives the values used when the user sets none. Datasets without a row
use the "other sets" row, except for the step sizes ``lr_teacher`` and ``lr_lr``, which are None
there: derived from the buffer and the first gradient at the start of the run
(:mod:`ddpp_cli.engine.autolr`, issue 14); ``derive=True`` asks for that on a paper row too. For
an IPC between the listed ones the closest listed IPC is used (ties go to the smaller one).
"""

from __future__ import annotations

from typing import Any

from ddpp_cli.engine import data

KEYS = (
    "syn_steps",
    "expert_epochs",
    "max_start_epoch",
    "batch_syn",
    "zca",
    "lr_img",
    "lr_lr",
    "lr_teacher",
)

# dataset -> ipc -> (N, M, T+, batch_syn (None = all), ZCA, lr_img, lr_lr, lr_teacher)
_TABLE: dict[str, dict[int, tuple[int, int, int, int | None, bool, float, float, float]]] = {
    "cifar10": {
        1: (50, 2, 2, None, True, 100.0, 1e-7, 0.01),
        10: (30, 2, 20, None, True, 100.0, 1e-5, 0.001),
        50: (30, 2, 40, None, False, 1000.0, 1e-5, 0.001),
    },
    "cifar100": {
        1: (20, 3, 20, None, True, 1000.0, 1e-5, 0.01),
        10: (20, 2, 20, None, False, 1000.0, 1e-5, 0.01),
        50: (80, 2, 40, 125, True, 1000.0, 1e-5, 0.01),
    },
    "tinyimagenet": {
        1: (10, 2, 10, None, False, 10000.0, 1e-4, 0.01),
        10: (20, 2, 40, 200, False, 10000.0, 1e-4, 0.01),
        50: (20, 2, 40, 300, False, 10000.0, 1e-4, 0.01),
    },
}
# The table's "other sets" row; its lr_lr 1e-5 and lr_teacher 0.01 are replaced by derived values.
_OTHER = (20, 2, 10, None, False, 100.0, 1e-5, 0.01)
DERIVED = ("lr_teacher", "lr_lr")  # None in a resolved preset: derived at the start of the run


def has_paper_row(dataset: str) -> bool:
    """Whether the paper lists tuned values for ``dataset`` (CIFAR-10/100, Tiny ImageNet)."""
    return data.info(dataset).name in _TABLE


def resolve(dataset: str, ipc: int, *, derive: bool = False) -> dict[str, Any]:
    """The preset for ``dataset`` and ``ipc`` as a dict over :data:`KEYS`.

    :data:`DERIVED` are None (derive at the start of the run) for datasets without a paper row,
    and for every dataset with ``derive``.
    """
    name = data.info(dataset).name
    rows = _TABLE.get(name)
    if rows is None:
        values = _OTHER
    else:
        closest = min(rows, key=lambda listed: (abs(listed - ipc), listed))
        values = rows[closest]
    resolved = dict(zip(KEYS, values, strict=True))
    if derive or rows is None:
        resolved.update(dict.fromkeys(DERIVED))
    return resolved


# DATM's configs (NUS-HPC-AI-Lab/DATM, configs/<dataset>/ConvIN/IPC<n>.yaml), per dataset and
# IPC: (N syn_steps, M expert_epochs, T⁻ min_start_epoch, T⁻⁺ current_max_start_epoch (ddpp:
# max_start_from) or None when Sequential_Generation is False, T⁺ max_start_epoch,
# expansion_end_epoch or None,
# batch_syn, lr_img, lr_lr, lr_teacher, lr_y, threshold); all with ZCA, Momentum_y 0.9.
DATM_TABLE: dict[str, dict[int, tuple[Any, ...]]] = {
    "cifar10": {
        1: (80, 2, 0, None, 4, None, 10, 100.0, 1e-7, 0.01, 5.0, 1.1),
        10: (80, 2, 0, 10, 20, 1000, 100, 100.0, 1e-5, 0.01, 2.0, 1.0),
        50: (80, 2, 0, 20, 40, 2000, 500, 1000.0, 1e-5, 0.01, 2.0, 1.0),
        500: (40, 2, 40, None, 60, None, 1000, 50.0, 1e-5, 0.01, 10.0, 1.0),
        1000: (100, 2, 40, None, 60, None, 1000, 50.0, 1e-5, 0.01, 10.0, 1.0),
    },
    "cifar100": {
        1: (40, 3, 0, 10, 20, 1000, 1000, 1000.0, 1e-5, 0.01, 10.0, 1.0),
        10: (80, 2, 0, 30, 50, 2000, 1000, 1000.0, 1e-5, 0.01, 10.0, 1.0),
        50: (80, 2, 20, None, 70, None, 1000, 1000.0, 1e-5, 0.01, 10.0, 1.0),
        100: (80, 2, 30, None, 70, None, 1000, 50.0, 1e-5, 0.01, 10.0, 1.0),
    },
    "tinyimagenet": {
        1: (40, 2, 0, 15, 20, 2000, 1000, 10000.0, 1e-4, 0.01, 10.0, 1.0),
        10: (40, 2, 10, None, 50, None, 500, 100.0, 1e-4, 0.01, 10.0, 1.0),
        50: (20, 2, 40, None, 70, None, 1000, 100.0, 1e-4, 0.01, 10.0, 1.0),
    },
}
DATM_KEYS = (
    "syn_steps", "expert_epochs", "min_start_epoch", "max_start_from", "max_start_epoch",
    "expansion_end", "batch_syn", "lr_img", "lr_lr", "lr_teacher", "lr_labels", "skip_threshold",
)  # fmt: skip
DATM_LR_LABELS = 2.0  # DATM's default lr_y (utils/cfg.py), for datasets without a config


def datm_preset(dataset: str, ipc: int) -> dict[str, Any] | None:
    """DATM's config for ``dataset`` at the closest listed IPC (ties: the smaller), or None."""
    rows = DATM_TABLE.get(data.info(dataset).name)
    if rows is None:
        return None
    closest = min(rows, key=lambda listed: (abs(listed - ipc), listed))
    return dict(zip(DATM_KEYS, rows[closest], strict=True))


def datm_lr_labels(dataset: str, ipc: int) -> float:
    """DATM's lr_y for ``dataset``/``ipc`` (its config's), else its default 2.0."""
    preset = datm_preset(dataset, ipc)
    return DATM_LR_LABELS if preset is None else float(preset["lr_labels"])


SOFT_LABELS = ("teacher", "learned")
DATM_ORIGIN = "preset (DATM configs)"  # the settings table's "from" for its values


def datm_values(dataset: str, ipc: int, labels: str | None, *, derive: bool = False) -> dict:
    """The preset of a tm run with DATM's labels (``labels`` teacher or learned): DATM's config
    for ``dataset``/``ipc`` (its step sizes lr_teacher, lr_lr left open with ``derive``; lr_y
    for learned labels only); {} for hard labels or a dataset DATM has no config for."""
    preset = datm_preset(dataset, ipc) if labels in SOFT_LABELS else None
    if preset is None:
        return {}
    if derive:
        preset.update(dict.fromkeys(DERIVED))
    if labels != "learned":  # fixed teacher labels have no lr
        del preset["lr_labels"]
    return preset
