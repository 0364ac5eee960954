"""Generate docs/cli.md from the Typer app, so the CLI reference cannot drift from the code.

Regenerate with ``python -m ddpp_cli.clidoc > docs/cli.md``; tests/test_clidoc.py fails when the
committed file differs from what this renders.
"""

from __future__ import annotations

from typing import Any

import typer

from ddpp_cli.engine import faults

HEADER = """# Command-line reference

Generated from the code by `python -m ddpp_cli.clidoc > docs/cli.md`; a test fails when this file
is stale.

## Exit statuses

Every failure ends with one line (`error: ...`) saying what failed and what to do; only a bug
shows a traceback. Faults of the environment (3, 4, 5) stopping `ddpp distill`, `ddpp run` or
`ddpp buffer` keep what was finished: the line says which iteration the checkpoint holds (or how
many experts are kept) and the command that continues.
"""

# (status, meaning, what to do): the table under "Exit statuses".
EXIT_STATUSES = (
    ("0", "done", "—"),
    (
        "1",
        "the distillation diverged (loss, α or images not finite, or α ≤ 0); the last good set "
        "is in `RUN/distilled.safetensors`",
        "a lower `--lr-img` or `--lr-lr`, in a new run",
    ),
    (
        "2",
        "bad input: an unknown name, a value out of range, missing data, an incompatible or "
        "unreadable file",
        "what the line says",
    ),
    (
        f"{faults.EXIT_OUT_OF_MEMORY}",
        "out of memory (GPU, MPS or host)",
        "the options the line names: `--unroll memory` (may change on `--resume`), a smaller "
        "`--batch-syn`, `--parallel` or `--batch-size`",
    ),
    (
        f"{faults.EXIT_DISK_FULL}",
        "disk full (or quota exceeded)",
        "free space or choose another output folder, then the same command again",
    ),
    (
        f"{faults.EXIT_CANNOT_WRITE}",
        "an output path cannot be written (permission denied, read-only, moved or deleted "
        "while running), or an input cannot be read (permission denied)",
        "make it writable (readable) or choose another, then the same command again",
    ),
    (
        "130",
        "interrupted (Ctrl-C or SIGTERM); a distillation writes a checkpoint first",
        "the same command (`ddpp distill --resume RUN`)",
    ),
)


def _exit_status_table() -> list[str]:
    rows = [f"| {status} | {meaning} | {todo} |" for status, meaning, todo in EXIT_STATUSES]
    return ["| status | meaning | what to do |", "|---|---|---|", *rows, ""]


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _listed(params: list[Any]) -> list[Any]:
    """The parameters a user is shown: not ``--help``, not hidden (an old spelling refused)."""
    return [p for p in params if p.name != "help" and not getattr(p, "hidden", False)]


def _type_name(param: Any, ctx: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    if hasattr(param, "type"):  # click-based Typer
        return str(param.type.name).lower()
    return str(param.display_type(ctx)).strip("<>")  # Typer with its own parameter model


def _option_row(param: Any, ctx: Any) -> str:
    """One table row; ``param`` is a click parameter (click or the copy Typer vendors)."""
    if _is_argument(param):
        names = f"`{(param.metavar or param.name).upper()}`"
        kind = "argument"
    else:
        flags = list(param.opts) + list(param.secondary_opts)
        names = " / ".join(f"`{flag}`" for flag in flags)
        kind = _type_name(param, ctx)
    default = param.default
    if callable(default) or default is None or _is_argument(param):
        shown = ""
    elif isinstance(default, bool) and param.secondary_opts:
        shown = f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    else:
        shown = f"`{default}`"
    text = " ".join((getattr(param, "help", None) or "").split())
    return f"| {names} | {kind} | {shown} | {text.replace('|', '/')} |"


def _command_section(name: str, command: Any, ctx: Any) -> list[str]:
    help_text = (command.help or "").strip()
    lines = [f"## `ddpp {name}`", "", help_text, ""]
    params = _listed(command.params)
    if params:
        lines += ["| option | type | default | description |", "|---|---|---|---|"]
        lines += [_option_row(p, ctx) for p in params]
        lines.append("")
    return lines


def render(app: typer.Typer) -> str:
    """The Markdown reference of every command and option of ``app``."""
    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    lines = [HEADER, *_exit_status_table(), "## `ddpp`", "", (group.help or "").strip(), ""]
    lines += ["| command | description |", "|---|---|"]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        lines.append(f"| [`{name}`](#ddpp-{name}) | {command.get_short_help_str(200)} |")
    lines.append("")
    for name in group.list_commands(ctx):
        lines += _command_section(name, group.get_command(ctx, name), ctx)
    return "\n".join(lines).rstrip() + "\n"


def undocumented_options(app: typer.Typer) -> list[str]:
    """``command --option`` for every option without help text (should be empty)."""
    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    missing = []
    for name in group.list_commands(ctx):
        for param in _listed(group.get_command(ctx, name).params):
            if not _is_argument(param) and not (getattr(param, "help", "") or "").strip():
                missing.append(f"{name} {param.opts[0]}")
    return missing


if __name__ == "__main__":
    from ddpp_cli.cli import app

    print(render(app), end="")
