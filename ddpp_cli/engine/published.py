"""Published test accuracies (%, ConvNet-3) of the methods ``ddpp run --compare`` puts in one
table: only the values METHODS.md §7 (and docs/methods.md) quote, with their source, and whether
they were confirmed from the paper or are recalled (``confirmed=False``, shown as unchecked).

They come from other evaluation protocols (the DC benchmark trains coresets without
augmentation, for instance): a guide next to ddpp's own figures, not a target.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpp_cli.engine import data


@dataclass(frozen=True)
class Reference:
    """A published accuracy (%, ConvNet-3) for a row, with its source."""

    accuracy: float
    std: float | None
    source: str
    confirmed: bool  # False: recalled in METHODS.md §7, not checked against the paper

    def text(self) -> str:
        std = "" if self.std is None else f" ± {self.std:g}"
        return f"{self.accuracy:g}{std} ({self.source}{'' if self.confirmed else ', unchecked'})"


_SOURCES = {
    "a": "DC paper, Table 1",
    "b": "DatasetCondensation readme",
    "c": "DM paper, via the FTD table",
    "d": "CAFE paper, Table 1",
    "pp": "FTD table (as 'PP')",
}
# METHODS.md §7 (and docs/methods.md): row -> dataset -> (IPC 1 / 10 / 50, source, confirmed).
_PUBLISHED: dict[str, dict[str, tuple[tuple[float, float, float], str, bool]]] = {
    "random": {
        "mnist": ((64.9, 95.1, 97.9), "a", False),
        "fashionmnist": ((51.4, 73.8, 82.5), "a", False),
        "cifar10": ((14.4, 26.0, 43.4), "a", True),
    },
    "herding": {
        "mnist": ((89.2, 93.7, 94.8), "a", False),
        "fashionmnist": ((67.0, 71.1, 71.9), "a", False),
        "cifar10": ((21.5, 31.6, 40.4), "a", True),
    },
    "forgetting": {
        "mnist": ((35.5, 68.1, 88.2), "a", False),
        "fashionmnist": ((42.0, 53.9, 55.0), "a", False),
        "cifar10": ((13.5, 23.3, 23.3), "a", True),
    },
    "dc": {
        "mnist": ((91.7, 97.4, 98.8), "b", True),
        "fashionmnist": ((70.5, 82.3, 83.6), "b", True),
        "cifar10": ((28.3, 44.9, 53.9), "b", True),
    },
    "dsa": {
        "mnist": ((88.7, 97.8, 99.2), "b", True),
        "fashionmnist": ((70.6, 84.6, 88.7), "b", True),
        "cifar10": ((28.8, 52.1, 60.6), "b", True),
    },
    "dm": {
        "mnist": ((89.7, 97.5, 98.6), "c", False),
        "fashionmnist": ((70.7, 83.5, 88.1), "c", False),
        "cifar10": ((26.0, 48.9, 63.0), "c", True),
    },
    "cafe": {  # plain CAFE (METHODS.md §7 also lists CAFE+DSA)
        "mnist": ((93.1, 97.2, 98.6), "d", False),
        "fashionmnist": ((77.1, 83.0, 84.8), "d", False),
        "cifar10": ((30.3, 46.3, 55.5), "d", True),
    },
    "ddpp": {"cifar10": ((46.4, 65.5, 71.9), "pp", True)},
}
# CIFAR-10 std as METHODS.md §7 gives them (IPC 1 / 10 / 50).
_STD = {
    "dc": (0.5, 0.5, 0.5),
    "dsa": (0.7, 0.5, 0.5),
    "dm": (0.8, 0.6, 0.4),
    "cafe": (1.1, 0.6, 0.6),
}
_IPCS = (1, 10, 50)


def reference(dataset: str, ipc: int, row: str) -> Reference | None:
    """The published accuracy of ``row`` on ``dataset`` at ``ipc`` (None when none is quoted)."""
    found = _PUBLISHED.get(row, {}).get(data.info(dataset).name)
    if found is None or ipc not in _IPCS:
        return None
    values, source, confirmed = found
    at = _IPCS.index(ipc)
    std = _STD[row][at] if row in _STD and data.info(dataset).name == "cifar10" else None
    return Reference(values[at], std, _SOURCES[source], confirmed)
