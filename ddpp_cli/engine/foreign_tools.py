"""The other tools whose files ddpp reads: one record per tool (its file layout, the mean/std it
normalised each dataset with, whether its scripts whiten, whether it learns an lr).

The normalisation follows each tool's own ``utils.get_dataset``: DC/DSA/DM
(VICO-UoE/DatasetCondensation) use each dataset's own mean/std, as ddpp's table does; MTT
(GeorgeCazenavette/mtt-distillation) and CAFE (kaiwang960112/CAFE) normalise CIFAR-100 with
CIFAR-10's mean/std; KIP (google-research ``kip/``) standardises each channel with the train
split's mean/std (ddpp's table values) and, where it whitens, uses its own ZCA variant
(``zca.fit_kip``). ``ddpp buffer --import`` (MTT's experts) and ``ddpp evaluate --import``
(MTT's, DC's, CAFE's or KIP's sets) both read this one table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ddpp_cli.engine import data
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.model_selection import BEST_TEST_LABEL
from ddpp_cli.engine.preprocess import Normalization

# images_<tag>.pt + labels_<tag>.pt (+ lr_<tag>.pt), a res_*.pt dict, or KIP's .npz
LAYOUTS = ("mtt", "res", "npz")


@dataclass(frozen=True)
class ForeignTool:
    """One tool: ``layout`` of its saved set (see :data:`LAYOUTS`), ``normalized_as`` (dataset →
    the dataset whose mean/std its non-ZCA images were normalised with, where not its own),
    ``whitens`` (its scripts run CIFAR with ZCA), and ``missing_lr`` (for a tool that learns
    an lr: why a set of it may come without one, and what to do), empty for one that learns
    none; ``zca_variant`` its ZCA (``zca.VARIANTS``), ``protocol`` how the tool trained
    networks on its sets where ddpp's evaluation is told so (a disclosed line; empty: none) and
    ``saved`` how the tool chose the set it saves (the selection label its imports print; MTT's
    depends on the file, :func:`mtt_selection`)."""

    name: str
    title: str
    layout: str
    whitens: bool
    normalized_as: Mapping[str, str] = field(default_factory=dict)
    missing_lr: str = ""
    zca_variant: str = "ddpp"
    protocol: str = ""
    saved: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalized_as", MappingProxyType(dict(self.normalized_as)))

    @property
    def learns_lr(self) -> bool:
        return bool(self.missing_lr)


_TOOLS: dict[str, ForeignTool] = {}


def register(tool: ForeignTool) -> ForeignTool:
    """Add ``tool`` to the registry (once per name)."""
    if tool.name in _TOOLS:
        raise ValueError(f"foreign tool {tool.name!r} is already registered")
    if tool.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {tool.layout!r}")
    _TOOLS[tool.name] = tool
    return tool


def list_tools() -> list[str]:
    """The tools' names, in registration order (``--import-kind``'s choices)."""
    return list(_TOOLS)


def get_tool(name: str) -> ForeignTool:
    """The record of ``name``; DdppError listing the choices when unknown."""
    if name not in _TOOLS:
        raise DdppError(f"unknown import kind '{name}'; choose one of: {', '.join(_TOOLS)}.")
    return _TOOLS[name]


def normalization_source(tool: str, dataset: str) -> str:
    """The dataset whose mean/std ``tool`` normalised ``dataset`` with (without ZCA)."""
    name = data.info(dataset).name
    return get_tool(tool).normalized_as.get(name, name)


def tool_normalization(tool: str, dataset: str) -> Normalization | None:
    """``tool``'s mean/std for ``dataset`` where they are not the dataset's own; None where the
    tool used the dataset's own (ddpp's table values, or computed from the train split)."""
    source = normalization_source(tool, dataset)
    if source == data.info(dataset).name:
        return None
    entry = data.info(source)
    return Normalization(tuple(entry.mean), tuple(entry.std))


def mtt_selection(tag: str) -> str:
    """How MTT (and DATM, PAD, FTD: the same ``distill.py`` loop) chose ``images_<tag>.pt``:
    ``best`` is the iteration with the best mean test accuracy (its ``save_this_it``), any other
    tag the iteration it names, saved without selection."""
    if tag == "best":
        return BEST_TEST_LABEL
    return f"iteration {tag} as MTT's distill.py saved it (not selected)"


register(
    ForeignTool(
        "mtt", "MTT", "mtt", whitens=True, normalized_as={"cifar100": "cifar10"},
        missing_lr="MTT's distill.py saves no learned lr; pass --lr with the Synthetic_LR of "
        "its log",
    )
)  # fmt: skip
# DC/DSA/DM's main.py and CAFE's distill.py save the last iteration ("only record the final
# results"); KIP saves the set its run ended with.
register(
    ForeignTool(
        "dc", "DC/DSA/DM", "res", whitens=False,
        saved="the final iteration as DC/DSA/DM saved it (not selected)",
    )
)  # fmt: skip
register(
    ForeignTool(
        "cafe", "CAFE", "res", whitens=False, normalized_as={"cifar100": "cifar10"},
        saved="the final iteration as CAFE saved it (not selected)",
    )
)  # fmt: skip
register(
    ForeignTool(
        "kip", "KIP", "npz", whitens=True, zca_variant="kip",
        protocol="KIP's label vectors are kept as the set's MSE targets (KIP's papers trained "
        "finite networks on its sets with MSE on them); where the evaluation trains on hard "
        "labels, they are the vectors' argmax",
        saved="the set KIP saved (not selected by ddpp)",
    )
)  # fmt: skip
