"""Options as config settings: the options given, by config field name, and the defaults that
help texts show, read from the config dataclasses' fields (never spelled twice)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import typer

from ddpp_cli.engine.distill import METHOD_PRESETS, DistillConfig


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


def preset_default(text: str, name: str) -> str:
    """``text`` with the one default that the other methods' presets give setting ``name``."""
    (value,) = {preset[name] for preset in METHOD_PRESETS.values() if name in preset}
    return f"{text} (default: {value_text(value)})"


def per_method(name: str) -> str:
    """Each method's default of ``name``, equal ones together: "tm 5000, dc/dsa 1000, …"."""
    methods: dict[str, list[str]] = {value_text(field_default(DistillConfig, name)): ["tm"]}
    for method, preset in METHOD_PRESETS.items():
        methods.setdefault(value_text(preset[name]), []).append(method)
    return ", ".join(f"{'/'.join(names)} {value}" for value, names in methods.items())


def init_default() -> str:
    """ "noise for dc and cafe, else real": the methods whose preset changes ``init``."""
    usual = field_default(DistillConfig, "init")
    others = {m: preset["init"] for m, preset in METHOD_PRESETS.items() if preset["init"] != usual}
    (other,) = set(others.values())
    return f"{other} for {' and '.join(others)}, else {usual}"
