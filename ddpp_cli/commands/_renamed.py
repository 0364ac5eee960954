"""Options renamed so that each word keeps one meaning: the old spelling stays hidden and is
refused with one line naming the new one (exit status 2)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ddpp_cli.commands._display import error_line


def renamed(old: str, new: str, why: str) -> Any:
    """A hidden option ``old`` (taking a value), refused with "``old`` is now ``new`` here …"."""

    def refuse(value: str | None) -> None:
        if value is not None:
            error_line(f"{old} is now {new} here {why}")
            raise typer.Exit(2)

    option = typer.Option(old, hidden=True, expose_value=False, callback=refuse)
    return Annotated[str | None, option]


# --zca FILE of evaluate, crossarch and visualize (--zca/--no-zca is a switch elsewhere).
ZcaFileRenamedOpt = renamed(
    "--zca",
    "--zca-file",
    "(the ZCA file); --zca/--no-zca is the ZCA switch of buffer, distill and run.",
)
