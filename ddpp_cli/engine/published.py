"""Published test accuracies (%, ConvNet-3) of the methods ``ddpp run --compare`` puts in one
table: exactly what docs/published.md gives, where it was checked against a source: the mean,
the std where a source prints it, the sources (docs/published.md's letters, named), and whether
the figure was confirmed (``confirmed=False``: "ᵘ", recalled from the papers and found in no
source; never a test target).

They come from other evaluation protocols (the DC benchmark trains coresets without
augmentation, for instance; docs/published.md compares them): a guide next to ddpp's own
figures, not a target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ddpp_cli.engine import data

UNCONFIRMED_MARK = "ᵘ"
UNCONFIRMED_NOTE = (
    f"{UNCONFIRMED_MARK} not confirmed: recalled from the papers, found in no source "
    "(docs/published.md); not a target"
)


@dataclass(frozen=True)
class Reference:
    """A published accuracy (%, ConvNet-3) for a row, with its source."""

    accuracy: float
    std: float | None  # None: no source prints one, or the sources disagree
    source: str
    confirmed: bool  # False: recalled from the papers, found in no source

    def text(self) -> str:
        """The table cell: "70.5 ± 0.6", or "51.4ᵘ" for an unconfirmed figure."""
        std = "" if self.std is None else f" ± {self.std:.1f}"  # one decimal, as published
        return f"{self.accuracy:.1f}{std}{'' if self.confirmed else UNCONFIRMED_MARK}"


# docs/published.md's sources, by its letters.
SOURCES = {
    "A": "DatasetCondensation readme",
    "B": "KIP paper (NeurIPS 2021 draft)",
    "C": "PAD (NeurIPS 2024)",
    "D": "AutoPalette (NeurIPS 2024)",
    "E": "InfoUtil (arXiv 2601.21296)",
    "F": "FTD (CVPR 2023)",
    "G": "GSDD (ICLR 2026 submission)",
}
UNFOUND = UNCONFIRMED_MARK  # the sources of a row of docs/published.md that none confirmed
_IPCS = (1, 10, 50)
# A cell: (mean, std or None), or (mean, std, sources) where they are not the row's; None: no
# published figure.
Cell = tuple[float, float | None] | tuple[float, float | None, str] | None
# docs/published.md's tables: dataset -> method -> (IPC 1, IPC 10, IPC 50, sources). Sources as
# its letters: before ";" the ones that gave the means (and stds), after it those that gave only
# the stds; UNFOUND for a row no source confirmed.
_TABLES: dict[str, dict[str, tuple[Cell, Cell, Cell, str]]] = {
    "fashionmnist": {
        "random": ((51.4, None), (73.8, None), (82.5, None), UNFOUND),
        "herding": ((67.0, None), (71.1, None), (71.9, None), UNFOUND),
        "forgetting": ((42.0, None), (53.9, None), (55.0, None), UNFOUND),
        "dc": ((70.5, 0.6), (82.3, 0.4), (83.6, 0.4), "A; B"),
        "dsa": ((70.6, 0.6), (84.6, 0.3), (88.7, 0.2), "A; B"),
        "dm": ((70.7, None), (83.5, None), (88.1, None), UNFOUND),
        "cafe": ((77.1, None), (83.0, None), (84.8, None), UNFOUND),
        "cafe-dsa": ((73.7, None), (83.0, None), (88.2, None), UNFOUND),
        "kip": ((73.8, None), (86.8, None), (87.8, None), UNFOUND),  # B's draft only
        "full": ((93.5, None), (93.5, None), (93.5, None), UNFOUND),  # DC's Table 1, recalled
    },
    "mnist": {
        "random": ((64.9, None), (95.1, None), (97.9, None), UNFOUND),
        "herding": ((89.2, None), (93.7, None), (94.8, None), UNFOUND),
        "forgetting": ((35.5, None), (68.1, None), (88.2, None), UNFOUND),
        "dc": ((91.7, 0.5), (97.4, 0.2), (98.8, 0.1), "A; B"),
        "dsa": ((88.7, 0.6), (97.8, 0.1), (99.2, 0.1), "A; B"),
        "dm": ((89.7, None), (97.5, None), (98.6, None), UNFOUND),
        "cafe": ((93.1, None), (97.2, None), (98.6, None), UNFOUND),
        "cafe-dsa": ((90.8, None), (97.5, None), (98.9, None), UNFOUND),
        "kip": ((90.1, None), (97.5, None), (98.4, None), UNFOUND),  # B's draft only
        "full": ((99.6, None), (99.6, None), (99.6, None), UNFOUND),  # DC's Table 1, recalled
    },
    "cifar10": {
        "random": ((14.4, None), (26.0, 1.2), (43.4, 1.0), "E, D"),  # IPC 1: stds disagree
        "herding": ((21.5, None), (31.6, 0.7), (40.4, 0.6), "E, D"),  # IPC 1: likewise
        "forgetting": ((13.5, 1.2), (23.3, 1.0), (23.3, 1.1), "E"),
        "dc": ((28.3, 0.5), (44.9, 0.5), (53.9, 0.5), "A; B, C, F"),
        "dsa": ((28.8, 0.7), (52.1, 0.5), (60.6, 0.5), "A; B, C, F"),
        "dm": ((26.0, 0.8), (48.9, 0.6), (63.0, 0.4), "C, D, F"),
        "cafe": ((30.3, 1.1), (46.3, 0.6), (55.5, 0.6), "C, F"),
        "cafe-dsa": ((31.6, 0.8), (50.9, 0.5), (62.3, 0.4), "F"),
        "kip": ((49.9, 0.2), (62.7, 0.3), (68.6, 0.2), "C"),
        "mtt": ((46.3, 0.8), (65.3, 0.7), (71.6, 0.2), "D, E, G"),
        "ddpp": ((46.4, 0.6), (65.5, 0.3), (71.9, 0.2), "F"),
        "full": ((84.8, 0.1), (84.8, 0.1), (84.8, 0.1), "C, F"),
    },
    "cifar100": {
        "random": ((4.2, 0.3), (14.6, 0.5), (30.0, 0.4), "D, E"),
        "herding": ((8.4, 0.3), (17.3, 0.3), (33.7, 0.5), "D, E"),
        "forgetting": ((4.5, 0.2), (15.1, 0.3), (30.5, 0.3), "E"),
        "dc": ((12.8, 0.3), (25.2, 0.3), None, "A; B, C, F"),
        "dsa": ((13.9, 0.3), (32.3, 0.3), (42.8, 0.4, "B, C, F"), "A; B, C, F"),
        "dm": ((11.4, 0.3), (29.7, 0.3), (43.6, 0.4), "C, D, F"),
        "cafe": ((12.9, 0.3), (27.8, 0.3), (37.9, 0.3), "C, F"),
        "cafe-dsa": ((14.0, 0.3), (31.5, 0.2), (42.9, 0.2), "F"),
        "kip": ((15.7, 0.2), (28.3, 0.1), None, "C"),
        "mtt": ((24.3, 0.3), (40.1, 0.4), (47.7, 0.2), "D, E, G"),
        "ddpp": ((24.6, 0.1), (43.1, 0.3), (48.4, 0.3), "F"),
        "full": ((56.2, 0.3), (56.2, 0.3), (56.2, 0.3), "C, F"),
    },
}
# Rows whose figure does not depend on the IPC (the whole training set): their IPC 1 cell
# answers for any IPC.
IPC_FREE_ROWS = ("full",)


def source_text(letters: str) -> str:
    """docs/published.md's letters named: "A; B, C" → "DatasetCondensation readme; std: KIP
    paper (NeurIPS 2021 draft), PAD (NeurIPS 2024)"."""
    if letters == UNFOUND:
        return "recalled from the papers, found in no source"
    means, _, stds = (part.strip() for part in letters.partition(";"))
    text = _named(means)
    return f"{text}; std: {_named(stds)}" if stds else text


def _named(letters: str) -> str:
    return re.sub(r"\b([A-G])\b", lambda match: SOURCES[match.group(1)], letters)


def reference(dataset: str, ipc: int, row: str) -> Reference | None:
    """The published accuracy of ``row`` on ``dataset`` at ``ipc`` (None when none is quoted)."""
    found = _TABLES.get(data.info(dataset).name, {}).get(row)
    if row in IPC_FREE_ROWS:
        ipc = _IPCS[0]
    if found is None or ipc not in _IPCS:
        return None
    cell, letters = found[_IPCS.index(ipc)], found[3]
    if cell is None:
        return None
    letters = cell[2] if len(cell) == 3 else letters
    return Reference(cell[0], cell[1], source_text(letters), letters != UNFOUND)


def references() -> dict[tuple[str, int, str], Reference]:
    """Every published figure, by (dataset, IPC, method)."""
    return {
        (dataset, ipc, row): found
        for dataset, rows in _TABLES.items()
        for row in rows
        for ipc in _IPCS
        if (found := reference(dataset, ipc, row)) is not None
    }
