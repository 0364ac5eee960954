"""The registry of distillation methods: one :class:`MethodInfo` per ``--method``, registered
once by its module (timm's pattern); every table, help text and check reads it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from ddpp_cli.engine.errors import DdppError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ddpp_cli.engine.distill.config import DistillConfig
    from ddpp_cli.engine.distill.setup import RunSetup
    from ddpp_cli.engine.distill.state import DistillState

DEFAULT_METHOD = "tm"
# The one random stream of a method without buffer: real batches, DSA draws, inner-loop shuffles.
MATCHING_GENERATORS = ("matching",)


class Step(Protocol):
    """One iteration of a method on a state; returns its metrics line."""

    def step(self, state: DistillState) -> dict[str, Any]: ...


# (dataset, ipc, derive) -> the method's preset values (derive: --auto-lr, tm only).
PresetFn = Callable[[str, int, bool], dict[str, Any]]


@dataclass(frozen=True)
class CompareRow:
    """A row of ``ddpp run --compare`` that runs this method: its name, its label in the table
    and the settings it changes (e.g. mtt: ε 0)."""

    name: str
    label: str
    changes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def _no_check(config: DistillConfig) -> None:
    """No method-specific check."""


def _no_lighter_unroll(config: DistillConfig) -> str:
    return ""


def _lower_lr_img(
    config: DistillConfig, record: dict[str, Any], lr: float | None
) -> tuple[str, str]:
    """Where a run of a method without learned step size diverged, and what to do."""
    return f"method {config.method}", (
        f"Lower --lr-img (it was {config.lr_img:g}) and start a new run."
    )


@dataclass(frozen=True)
class MethodInfo:
    """Everything ddpp knows about one distillation method (docs/methods.md, docs/distill.md).

    ``settings``: the options only some methods take (option name = field name; ``buffer`` and
    ``auto_lr`` are options of the command), in the order they are checked; ``needed``: those
    the run cannot start without (all ≥ 1 except step sizes). ``preset`` gives its values per
    dataset/IPC (``preset_source`` says where they come from, ``derived`` which of them follow
    from the IPC); ``paper_budget`` is its paper's iterations, ``quick_budget`` and
    ``quick_cuts`` the CPU budget and cuts of ``ddpp run --compare --profile quick``.
    """

    name: str  # the --method value
    label: str  # in tables
    summary: str  # in --method's help; methods with the same summary are listed together
    doc: str  # the docs page (and section) that describes it
    preset: PresetFn
    preset_source: str
    paper_budget: int  # iterations
    step: Callable[[RunSetup], Step]  # what runs one iteration of a set-up run
    settings: tuple[str, ...] = ()
    needed: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()  # preset values that follow from the IPC (origin "derived")
    preset_only: tuple[str, ...] = ()  # preset values that choose, not set (tm's zca: the buffer)
    needs_buffer: bool = False  # expert trajectories (else the real training images)
    learns_step_size: bool = False  # α, learned with the images
    matching_dsa: bool = True  # DSA in its matching and inner training (evaluation: always)
    allows_zca: bool = False
    # The ZCA a method without buffer whitens its data with when ``zca`` is on (the images' fit
    # (N, C, H, W) in [0, 1] -> ZCA; e.g. KIP's variant); None: it distils normalised images.
    zca_fit: Callable[[torch.Tensor], Any] | None = None
    distributed: bool = False  # may run under torchrun
    generators: tuple[str, ...] = MATCHING_GENERATORS  # the random streams its checkpoint keeps
    unset: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # None → this
    check: Callable[[DistillConfig], None] = _no_check  # its own checks of a config (DdppError)
    # DdppError when the run's network cannot serve the method: (config, network, one image).
    check_network: Callable[[DistillConfig, nn.Module, torch.Tensor], None] | None = None
    lighter_unroll: Callable[[DistillConfig], str] = _no_lighter_unroll  # less memory
    # (config, failed iteration's record, α) -> (where it diverged, what to do)
    divergence: Callable[[DistillConfig, dict[str, Any], float | None], tuple[str, str]] = (
        _lower_lr_img
    )
    quick_budget: int | None = None
    quick_cuts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    compare_rows: tuple[CompareRow, ...] = ()  # default: one row, the method as it is
    optimizer: str = "sgd"  # the images' (distill.state.OPTIMIZERS): SGD momentum 0.5, or adam


_REGISTRY: dict[str, MethodInfo] = {}


def register(info: MethodInfo) -> MethodInfo:
    """Add ``info`` to the registry (once per name); returns it."""
    if info.name in _REGISTRY:
        raise ValueError(f"method '{info.name}' is registered twice")
    _REGISTRY[info.name] = info
    return info


def list_methods() -> tuple[str, ...]:
    """The registered methods' names, in registration order (tm first)."""
    return tuple(_REGISTRY)


def get_method(name: str) -> MethodInfo:
    """The record of ``name``; DdppError listing the choices when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DdppError(
            f"--method must be one of: {', '.join(_REGISTRY)} (got '{name}')."
        ) from None


def method_settings() -> dict[str, tuple[str, ...]]:
    """Setting → the methods that take it, for every setting some method does not take (any
    other setting applies to every method); in the methods' order."""
    table: dict[str, list[str]] = {}
    for info in _REGISTRY.values():
        for name in info.settings:
            table.setdefault(name, []).append(info.name)
    return {name: tuple(methods) for name, methods in table.items()}


def compare_rows(info: MethodInfo) -> tuple[CompareRow, ...]:
    """The ``--compare`` rows that run ``info``: its own, or those it lists."""
    return info.compare_rows or (CompareRow(info.name, info.label),)


def method_help() -> str:
    """``--method``'s help: each method (or group of methods) with its summary."""
    groups: list[tuple[list[str], str]] = []
    for info in _REGISTRY.values():
        if groups and groups[-1][1] == info.summary:
            groups[-1][0].append(info.name)
        else:
            groups.append(([info.name], info.summary))
    listed = "; ".join(f"{', '.join(names)}: {summary}" for names, summary in groups)
    buffered = [info.name for info in _REGISTRY.values() if info.needs_buffer]
    return (
        f"{listed} (docs/methods.md). Only {', '.join(buffered)} needs a buffer. "
        f"(default: {DEFAULT_METHOD})"
    )


def iterations_help() -> str:
    """``--iterations``' help: each method's paper budget (methods alike listed together)."""
    groups: list[tuple[list[str], int]] = []
    for info in _REGISTRY.values():
        if groups and groups[-1][1] == info.paper_budget:
            groups[-1][0].append(info.name)
        else:
            groups.append(([info.name], info.paper_budget))
    listed = ", ".join(f"{'/'.join(names)} {budget}" for names, budget in groups)
    return f"Distillation iterations. (default: the method's: {listed})"
