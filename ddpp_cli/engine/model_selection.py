"""How a distillation chooses its set among its iterations: the selection conventions
(``--selection``), each a frozen record with the label every output prints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ddpp_cli.engine.errors import DdppError

VALIDATION_LABEL = "validation split, tested once"
BEST_TEST_LABEL = "test-selected (MTT's convention)"
# An imported set whose record names no selection (a file saved before imports recorded one).
IMPORTED_LABEL = "as its tool saved it (selection unknown)"


@dataclass(frozen=True)
class SelectionRule:
    """One convention: its ``--selection`` name, the label outputs print, whether a validation
    split is held out of the training data, the split the set is chosen on (``"val"`` or
    ``"test"``: also the prefix of the metrics keys, ``val_accuracy``/``test_accuracy``), the
    seed purpose of its evaluation networks, and what it does in a few words (its help)."""

    name: str
    label: str
    holds_out_validation: bool
    chosen_on: str
    seed_purpose: str
    description: str

    @property
    def accuracy_key(self) -> str:
        return f"{self.chosen_on}_accuracy"

    @property
    def std_key(self) -> str:
        return f"{self.chosen_on}_std"


VALIDATION = SelectionRule(
    name="validation",
    label=VALIDATION_LABEL,
    holds_out_validation=True,
    chosen_on="val",
    seed_purpose="val_eval",
    description="the best mean accuracy on a validation split held out of the training data, "
    "then tested once",
)
BEST_TEST = SelectionRule(
    name="best-test",
    label=BEST_TEST_LABEL,
    holds_out_validation=False,
    chosen_on="test",
    seed_purpose="select_test_eval",
    description="MTT's convention: the best mean test accuracy over the --eval-every points, "
    "kept and reported as such",
)
SELECTIONS: dict[str, SelectionRule] = {rule.name: rule for rule in (VALIDATION, BEST_TEST)}
DEFAULT_SELECTION = VALIDATION.name
# ``--selection``'s help text (ddpp distill, ddpp run), read from the records.
SELECTION_HELP = (
    "How the set is chosen: "
    + " or ".join(f"{rule.name} ({rule.description})" for rule in SELECTIONS.values())
    + f"; docs/distill.md#selection. (default: {DEFAULT_SELECTION})"
)


def get_selection(name: str) -> SelectionRule:
    """The rule named ``name``; DdppError listing the choices."""
    if not isinstance(name, str) or name not in SELECTIONS:
        raise DdppError(f"--selection must be one of: {', '.join(SELECTIONS)} (got '{name}').")
    return SELECTIONS[name]


def label_of_settings(settings: Mapping[str, Any]) -> str:
    """The selection label of a set whose ``settings`` (its metadata) may name its rule: an
    imported set's is its tool's (how the tool chose the file it saved, recorded at import);
    a set without one (a coreset, an older file) keeps the validation label."""
    imported = settings.get("imported")
    if isinstance(imported, Mapping):
        label = imported.get("selection")
        return label if isinstance(label, str) and label else IMPORTED_LABEL
    name = settings.get("selection")
    known = isinstance(name, str) and name in SELECTIONS
    return SELECTIONS[name].label if known else VALIDATION_LABEL
