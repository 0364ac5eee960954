"""Display helpers shared by several commands: consoles, notes, interrupts, result tables."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ddpp_cli.engine import evaluate, faults
from ddpp_cli.engine.device import resolve_device
from ddpp_cli.engine.distill import DivergedError
from ddpp_cli.engine.distributed import World, join_world
from ddpp_cli.progress import percent

out = Console()
err = Console(stderr=True)


def line(console: Console, text: str) -> None:
    """One line of text as written (no highlighting, no wrapping of long paths)."""
    console.print(text, highlight=False, soft_wrap=True)


def note(console: Console, message: str) -> None:
    line(console, f"[yellow]note:[/] {message}")


def error_line(message: str) -> None:
    """A failure's one line on stderr: ``error: ...`` (the message as written, never markup)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def joined_world(device: str) -> tuple[World, torch.device]:
    """This process's world (torchrun's ranks, else one process) and device for ``--device``;
    a rank 0 that waits for the others says so once on stderr."""
    return join_world(resolve_device(device), on_event=lambda event: note(err, event.message))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (a kill, a scheduler's preemption) like Ctrl-C: checkpoint, then exit."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def continuing(continuation: Callable[[faults.StageFailed], str]) -> Iterator[None]:
    """Say how to continue when a stage that kept its work stops (:class:`faults.StageFailed`),
    e.g. "continue with 'ddpp distill --resume RUN'"; the CLI's handler prints it."""
    try:
        yield
    except faults.StageFailed as exc:
        exc.continuation = continuation(exc)
        raise


@contextlib.contextmanager
def distilling(
    progress,
    resume_hint: str,
    continuation: Callable[[faults.StageFailed], str] | None = None,
    *,
    speak: bool = True,
) -> Iterator[None]:
    """Around a distillation: SIGTERM acts as Ctrl-C; a diverged run exits with status 1 and an
    interrupted one with 130, each with one line (``resume_hint`` says how to continue) unless
    ``speak`` is False (the ranks of a torchrun job but rank 0); a stage stopped by an
    environment fault says how to continue with ``continuation`` (see :func:`continuing`) and
    leaves the line and status to the CLI's handler."""
    try:
        with continuing(continuation or (lambda failed: "")), sigterm_as_interrupt(), progress:
            yield
    except DivergedError as exc:
        if speak:
            line(err, f"[bold red]diverged:[/] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if speak:
            line(err, f"[yellow]interrupted[/]; {resume_hint}")
        raise typer.Exit(130) from None


def protocol_line(result: evaluate.EvalResult, network: str | None = None) -> str:
    """How an evaluation was done, in one line under its table; ``network`` replaces the
    architecture and its size (e.g. "each architecture")."""
    p = result.protocol
    dsa = "off" if p["dsa_strategy"] == "none" else "on"
    runs = f"{p['runs']} run" + ("s" if p["runs"] != 1 else "")
    return (
        f"protocol: {network or network_label(result)}, {p['epochs']} epochs, lr "
        f"{result.lr:g} ({p['lr_source']}), "
        f"{p['lr_schedule']}, batch {p['batch_size']}, SGD momentum {p['momentum']:g}, "
        f"weight decay {p['weight_decay']:g}, DSA {dsa}, {runs} from seed "
        f"{p['seed']}; tested on {p['test_size']} images ({p.get('preprocessing', '?')}); "
        f"± is the population std · {p.get('label_text', evaluate.HARD_LABELS_TEXT)}"
        + _selection_note(result)
    )


def _selection_note(result: evaluate.EvalResult) -> str:
    """ "; the set is test-selected (MTT's convention)" for such a set, else nothing."""
    return "" if result.selection == evaluate.SELECTION_RULE else f"; the set is {result.selection}"


def network_label(result: evaluate.EvalResult) -> str:
    """``convnet (320,010 parameters)``: the architecture evaluated and its size when recorded."""
    count = result.protocol.get("parameters")
    size = f" ({count:,} parameters)" if isinstance(count, int) else ""
    return f"{result.protocol['arch']}{size}"


def print_result(title: str, result: evaluate.EvalResult, scores: dict | None = None) -> None:
    """One evaluation: a table of runs with mean ± std, the protocol line and the time; then
    the ``--scores`` table when ``scores`` holds them."""
    table = Table(title=title)
    table.add_column("run", justify="right")
    table.add_column("test accuracy", justify="right")
    for run, acc in enumerate(result.accuracies):
        diverged = run in result.protocol.get("diverged_runs", [])
        table.add_row(str(run + 1), percent(acc) + (" (diverged)" if diverged else ""))
    table.add_section()
    table.add_row("mean ± std", f"[bold]{result.mean_std_text()} %[/]")
    out.print(table)
    line(out, protocol_line(result))
    provenance = provenance_line(result)
    if provenance:
        note(out, provenance)
    out.print(f"time: {result.seconds:.0f} s", highlight=False)
    if scores:
        from ddpp_cli.commands._scores import print_scores  # it prints with this module

        print_scores(scores)


def provenance_line(result: evaluate.EvalResult) -> str:
    """Which runs were read from records made by another ddpp/torch version or on another
    device ("" when none): their numbers stand, but not as this installation's."""
    elsewhere = result.made_elsewhere
    if not elsewhere:
        return ""
    made = sorted({f"ddpp {e['ddpp']}, torch {e['torch']}, {e['device']}" for e in elsewhere})
    runs = ", ".join(str(e["run"] + 1) for e in elsewhere)
    return f"run(s) {runs} reused from records made with {'; '.join(made)}"


def set_label(path: Path, distilled_set) -> str:
    return f"{path} ({distilled_set.source}, {distilled_set.dataset}, IPC {distilled_set.ipc})"
