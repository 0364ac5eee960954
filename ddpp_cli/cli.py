"""The ``ddpp`` command line: the Typer app, its root options and the one error handler.

Each command lives in its own module of :mod:`ddpp_cli.commands` (options, display, engine
call); this module registers them.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from ddpp_cli import __version__
from ddpp_cli.commands import buffer, crossarch, distill, evaluate, run, visualize
from ddpp_cli.commands._display import err, out
from ddpp_cli.engine.errors import DdppError

app = typer.Typer(
    name="ddpp",
    help="Dataset distillation by trajectory matching with parameter pruning (DDPP/MTT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., object])


def user_errors(command: F) -> F:
    """Turn a DdppError into one red line and exit status 2; Ctrl-C into status 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DdppError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]; everything already written is complete.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out.print(f"ddpp {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Dataset distillation by trajectory matching with parameter pruning (DDPP/MTT)."""


for _name, _module in (
    ("buffer", buffer),
    ("distill", distill),
    ("evaluate", evaluate),
    ("crossarch", crossarch),
    ("visualize", visualize),
    ("run", run),
):
    app.command(_name)(user_errors(_module.command))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
