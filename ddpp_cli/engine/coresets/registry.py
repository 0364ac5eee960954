"""The coreset registry: one :class:`CoresetInfo` per kind of coreset, registered once by its
module; every table, help text and check reads it instead of branching on the name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ddpp_cli.engine.coresets.pool import CoresetRequest
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import OnEvent

Selector = Callable[[CoresetRequest, int, torch.device | str, OnEvent], tuple[torch.Tensor, dict]]
"""``select(request, run, device, emit)``: the indices of the coreset of evaluation run ``run``
into ``request.train`` (class-major) and how they were chosen (a record for the set's settings;
empty for random). Training a selection network reports its epochs to ``emit``."""


@dataclass(frozen=True)
class CoresetInfo:
    """One kind of coreset: its name, how tables and ``--baseline``'s help call it, the options
    it takes (``BaselineConfig`` fields, which are ``ddpp evaluate`` options of the same name)
    and how it selects.

    A ``base`` coreset is a setting of another one (``preset``: the option values it fixes), run
    as that one: ``ddpp evaluate --baseline BASE`` with those options reaches it.
    """

    name: str
    label: str  # in tables (e.g. "Herding")
    help: str  # how --baseline's help names it, e.g. "herding (on a trained network's features)"
    select: Selector
    options: tuple[str, ...] = ()  # the settings of this coreset alone
    unused_with_buffer: tuple[str, ...] = ()  # of ``options``: moot with --buffer (its expert)
    per_run: bool = False  # a new subset per evaluation run; else one coreset for every run
    trained: bool = False  # chosen with a network trained on the pool: kept beside the records
    expert_features: bool = False  # with --buffer, in the features of its first expert
    budget_option: str | None = None  # what `ddpp run --compare-budget` sets (its epochs)
    base: str | None = None  # the coreset this one is a setting of
    preset: tuple[tuple[str, Any], ...] = ()  # (option, value) that setting fixes

    @property
    def method(self) -> str:
        """The coreset that runs: ``base``, else this one."""
        return self.base or self.name


_REGISTRY: dict[str, CoresetInfo] = {}


def register(info: CoresetInfo) -> CoresetInfo:
    """Add ``info`` to the registry (once per name); returns it."""
    if info.name in _REGISTRY:
        raise ValueError(f"coreset '{info.name}' is registered twice")
    if info.base is not None and info.base not in _REGISTRY:
        raise ValueError(f"coreset '{info.name}' is a setting of unregistered '{info.base}'")
    _REGISTRY[info.name] = info
    return info


def list_coresets(*, settings: bool = True) -> tuple[str, ...]:
    """The registered coreset names, in registration order; without the settings of another
    coreset (``forgetting-deepcore``) when ``settings`` is false: ``--baseline``'s choices."""
    return tuple(name for name, info in _REGISTRY.items() if settings or info.base is None)


def get_coreset(name: str) -> CoresetInfo:
    """The coreset called ``name``; DdppError listing the choices when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DdppError(
            f"unknown coreset '{name}'; choose one of: {', '.join(list_coresets())}."
        ) from None


def coreset_options() -> tuple[str, ...]:
    """Every coreset's own options, once each, in registration order."""
    return tuple(dict.fromkeys(o for info in _REGISTRY.values() for o in info.options))


def owner(option: str) -> CoresetInfo:
    """The coreset (not a setting of another) whose own option ``option`` is."""
    return next(i for i in _REGISTRY.values() if i.base is None and option in i.options)
