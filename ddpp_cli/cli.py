"""The ``ddpp`` command line: the Typer app, its root options and the one error handler.

Each command lives in its own module of :mod:`ddpp_cli.commands` (options, display, engine
call); this module registers them.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from ddpp_cli import __version__
from ddpp_cli.commands import buffer, crossarch, distill, evaluate, export, run, visualize
from ddpp_cli.commands._display import err, error_line, out
from ddpp_cli.engine import allocator, distributed, faults
from ddpp_cli.engine.errors import DdppError

app = typer.Typer(
    name="ddpp",
    help="Dataset distillation by trajectory matching with parameter pruning (DDPP/MTT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., object])


def user_errors(command: F, memory_levers: str = "") -> F:
    """Exit statuses and one-line errors: a DdppError (bad input) is one red line and status 2,
    Ctrl-C is status 130, and an environment fault (:mod:`ddpp_cli.engine.faults`: out of
    memory, a full disk, a path that cannot be written) is one line and its own status, naming
    ``memory_levers`` (the options that lower this command's memory) for out-of-memory. When
    the fault stopped a stage that kept its finished work (``StageFailed``), the line says what
    was kept and how to continue. Anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DdppError as exc:
            error_line(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]; everything already written is complete.")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # Typer's own exits and usage errors
        except Exception as exc:
            cause = exc.cause if isinstance(exc, faults.StageFailed) else exc
            fault = faults.describe(cause, memory_levers=memory_levers)
            if fault is None:
                raise  # a bug: the traceback (a StageFailed's says where the state is kept)
            error_line(fault.message + _kept(exc))
            raise typer.Exit(fault.status) from None

    return wrapper  # type: ignore[return-value]


def _kept(exc: Exception) -> str:
    """What a StageFailed adds to the fault's line: what was kept, and how to continue."""
    if not isinstance(exc, faults.StageFailed):
        return ""
    continuation = f": {exc.continuation}" if exc.continuation else ""
    return f" {exc.kept[:1].upper()}{exc.kept[1:]}{continuation}."


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
    try:  # DDPP_MALLOC checked before any work (engine/allocator.py)
        allocator.malloc_mode()
    except DdppError as exc:
        error_line(str(exc))
        raise typer.Exit(2) from None


_DISTILL_MEMORY_LEVERS = (
    "--unroll memory, a smaller --unroll-budget or a smaller --batch-syn (tm; the last in a new "
    "run), or a smaller --batch-real "
    "(dc, dsa, dm, cafe, cafe-dsa; in a new run)"
)
# Each command with the options that lower its memory, named when it runs out of memory.
for _name, _module, _memory_levers in (
    ("buffer", buffer, "a smaller --parallel, or a smaller --batch-size (in another --out)"),
    ("distill", distill, _DISTILL_MEMORY_LEVERS),
    ("evaluate", evaluate, "a smaller --parallel or --batch-size"),
    ("crossarch", crossarch, "a smaller --parallel or --batch-size"),
    ("visualize", visualize, ""),
    ("export", export, ""),
    ("run", run, "--unroll memory, a smaller --unroll-budget, --batch-syn or --parallel"),
):
    app.command(_name)(user_errors(_module.command, _memory_levers))


def main() -> None:
    """Console-script entry point. Under torchrun each rank ends through
    :func:`distributed.end_process` (its exit status, no abort in the interpreter's teardown)."""
    if not distributed.launched():
        app()
        return
    try:
        app()
        status = 0
    except SystemExit as exc:  # how click ends every command, with its status
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()  # a bug: shown as Python would show it
        status = 1
    distributed.end_process(status)


if __name__ == "__main__":
    sys.exit(main())
