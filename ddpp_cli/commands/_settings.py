"""Options as config settings: the options given, by config field name, and the defaults that
help texts show, read from the config dataclasses' fields (never spelled twice)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import typer

from ddpp_cli.engine.distill import DistillConfig
from ddpp_cli.engine.distill import methods as distill_methods


def settings(options: dict[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The options given (not None), by field name; TypeError for a name not in ``known``.

    Commands name their parameters after the config fields they set, so one call maps every
    setting (nanoGPT's configurator rejects unknown keys the same way).
    """
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    return {name: value for name, value in options.items() if value is not None}


def given_options(ctx: typer.Context) -> dict[str, object]:
    """The options the user set on the command line (not left at their defaults), by name:
    Typer's parameter source, so that a default typed out is "given" too."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {
        name: value
        for name, value in ctx.params.items()
        if sources[name] is not None and sources[name].name in ("COMMANDLINE", "ENVIRONMENT")
    }


def field_default(config: type, name: str) -> Any:
    """The default of the dataclass ``config``'s field ``name`` (KeyError if it has none)."""
    for field in dataclasses.fields(config):
        if field.name == name and field.default is not dataclasses.MISSING:
            return field.default
    raise KeyError(f"{config.__name__}.{name} has no default")


def value_text(value: object) -> str:
    """A default as a help text shows it: numbers in their shortest form (0.01, 2048)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_default(text: str, config: type, name: str) -> str:
    """``text`` followed by "(default: V)", V the default of ``config``'s field ``name`` (a
    switch's as its flag: "compile" or "no-compile")."""
    value = field_default(config, name)
    if isinstance(value, bool):
        return f"{text} (default: {'' if value else 'no-'}{name.replace('_', '-')})"
    return f"{text} (default: {value_text(value)})"


def distill_default(text: str, name: str) -> str:
    """``text`` with the default of :class:`DistillConfig`'s field ``name`` (tm's)."""
    return with_default(text, DistillConfig, name)


def _other_presets() -> dict[str, dict[str, Any]]:
    """The presets of the methods other than the default one, by method. Their values that help
    texts show (batch_real, lr_net, init, CAFE's bounds) are the same for every dataset and IPC,
    so one typical point (CIFAR-10, IPC 10) stands for all."""
    return {
        name: distill_methods.get_method(name).preset("cifar10", 10, False)
        for name in distill_methods.list_methods()
        if name != distill_methods.DEFAULT_METHOD
    }


def preset_default(text: str, name: str) -> str:
    """``text`` with the default that the other methods' presets give setting ``name`` (the
    most common one, then the methods whose preset differs, e.g. "256; kip 500")."""
    values = {m: preset[name] for m, preset in _other_presets().items() if name in preset}
    counts: dict[Any, int] = {}
    for value in values.values():
        counts[value] = counts.get(value, 0) + 1
    usual = max(counts, key=counts.__getitem__)
    others = "".join(f"; {m} {value_text(v)}" for m, v in values.items() if v != usual)
    return f"{text} (default: {value_text(usual)}{others})"


def init_default() -> str:
    """ "noise for dc and cafe, else real": the methods whose preset changes ``init``."""
    usual = field_default(DistillConfig, "init")
    others = {m: p["init"] for m, p in _other_presets().items() if p["init"] != usual}
    (other,) = set(others.values())
    return f"{other} for {' and '.join(others)}, else {usual}"
