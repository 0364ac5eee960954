"""What ``ddpp evaluate`` and ``ddpp crossarch`` share: the evaluation display, the training
and record options, and where finished runs are kept (``--records``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ddpp_cli.commands._display import err, note
from ddpp_cli.engine import augment, baselines, coresets, evaluate
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice
from ddpp_cli.progress import percent


class EvalDisplay:
    """Turns evaluation events into two progress bars (runs of an architecture, epochs), after
    a third for the network a baseline trains to choose its coreset (herding's features,
    forgetting's counts).

    With ``--parallel K`` several runs start together; the epochs bar follows the first one of
    the group and is labelled with the whole group.
    """

    def __init__(self, progress) -> None:
        self.progress = progress
        self.runs_task = None
        self.epochs_task = None
        self.arch = None
        self.group: list[int] = []  # runs started and not yet finished
        self.resumed: dict[str, list[int]] = {}  # arch -> runs taken from the records
        self.selection_task = None

    def __call__(self, event: object) -> None:
        p = self.progress
        match event:
            case evaluate.NetworkStarted():
                self._run_started(event)
            case evaluate.NetworkEpochFinished():
                if not self.group or event.run == self.group[0]:
                    p.update(self.epochs_task, advance=1)
            case evaluate.NetworkFinished() if event.resumed:
                self._arch(event.arch, event.runs)
                self.resumed.setdefault(event.arch, []).append(event.run)
                info = f"run {event.run + 1} from the records: {percent(event.accuracy)}"
                p.update(self.runs_task, advance=1, info=info)
            case evaluate.NetworkFinished():
                if event.run in self.group:
                    self.group.remove(event.run)
                diverged = "  [yellow]diverged[/]" if event.diverged else ""
                p.update(
                    self.runs_task, advance=1, info=f"last {percent(event.accuracy)}{diverged}"
                )
            case coresets.FeatureEpoch():
                self._selection("herding features", event.epoch, event.epochs, event.loss)
            case coresets.ForgettingEpoch():
                info = f"loss {event.loss:.4f}, correct {percent(event.accuracy)}"
                self._selection("forgetting counts", event.epoch, event.epochs, info)
            case baselines.SelectionReused() if not p.disable:
                note(p.console, f"selection taken from {event.path} (kept by an earlier run)")
            case Notice() if not p.disable:
                note(p.console, event.message)

    def _selection(self, what: str, epoch: int, epochs: int, info: float | str) -> None:
        if self.selection_task is None:
            self.selection_task = self.progress.add_task(what, total=epochs, info="")
        info = f"loss {info:.4f}" if isinstance(info, float) else info
        self.progress.update(self.selection_task, completed=epoch, info=info)

    def _arch(self, arch: str, runs: int) -> None:
        """A runs bar per architecture, added at its first event."""
        if arch != self.arch:
            self.arch = arch
            self.group = []
            self.runs_task = self.progress.add_task(
                f"{arch} runs",
                total=runs,
                info="",
                log_each=True,  # a line per network in a log
            )

    def _run_started(self, event: evaluate.NetworkStarted) -> None:
        p = self.progress
        self._arch(event.arch, event.runs)
        if self.epochs_task is None:
            self.epochs_task = p.add_task("epochs", total=event.epochs, info="")
        if not self.group:
            p.reset(self.epochs_task, total=event.epochs, info="")
        self.group.append(event.run)
        runs = f"{self.group[0] + 1}–{event.run + 1}" if len(self.group) > 1 else event.run + 1
        label = "runs" if len(self.group) > 1 else "run"
        p.update(self.epochs_task, description=f"{label} {runs}/{event.runs}")


# Options of evaluate and crossarch.
SetOrRunArgument = Annotated[
    Path | None,
    typer.Argument(
        help="A distilled-set file, or a 'ddpp distill' run folder (best.safetensors, else "
        "distilled.safetensors).",
        show_default=False,
    ),
]
RunsOpt = Annotated[int, typer.Option("--runs", help="Networks trained, each with its own seed.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Training epochs per network.")]
LrOpt = Annotated[
    float | None,
    typer.Option("--lr", help="Learning rate (default: the set's learned lr, else 0.01)."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Training batch size.")]
DsaOpt = Annotated[
    bool, typer.Option("--dsa/--no-dsa", help="Differentiable augmentation while training.")
]
LabelsOpt = Annotated[
    str,
    typer.Option(
        "--labels",
        help="Labels the networks train on: 'set', the set's label vectors when it has them "
        "(soft cross-entropy at its temperature for soft labels, the squared error for "
        "learned ones), else its hard labels; 'hard', the images' classes with cross-entropy. "
        "On a hard-label set both are the same.",
    ),
]
ZcaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--zca-file",
        help="ZCA file (a buffer's zca.safetensors): for a ZCA set whose file moved; for a "
        "baseline, whiten with it instead of fitting a new one; for --import, the ZCA the "
        "images were whitened with.",
    ),
]


RecordsOpt = Annotated[
    Path | None,
    typer.Option(
        "--records",
        help="Folder keeping each finished run, so that a rerun after a kill continues with the "
        "first missing run (default: RUN/evaluations/ for a run's set, SET.eval/ beside any "
        "other set file, the ddpp data folder's 'evaluations' for a baseline or an import).",
    ),
]
NoRecordsOpt = Annotated[
    bool,
    typer.Option("--no-records", help="Keep no records: train every run, resume nothing."),
]


def records_dir(
    set_path: Path | None, records: Path | None, no_records: bool, quiet: bool = False
) -> Path | None:
    """Where finished runs are kept: ``--records``, else the set's default; None with
    ``--no-records``, or (with a note) when the default folder cannot be written, e.g. beside a
    set in a read-only folder."""
    if no_records:
        if records is not None:
            raise DdppError("--records and --no-records contradict each other; pass one.")
        return None
    if records is not None:
        records.mkdir(parents=True, exist_ok=True)  # a path that cannot be one fails now,
        return records  # before any network is trained for nothing
    default = evaluate.default_records_dir(set_path)
    if not _writable(default):
        if not quiet:
            note(err, f"cannot keep records in {default} (not writable); a kill loses every "
                      "run: pass --records DIR to keep them elsewhere.")  # fmt: skip
        return None
    return default


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists writable or could be created (its nearest existing parent is
    a writable folder)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def records_line(records: Path | None, display: EvalDisplay) -> str | None:
    """``records: DIR`` and which runs were taken from there, for the text output."""
    if records is None:
        return None
    text = f"records: {records}"
    for arch, runs in display.resumed.items():
        numbers = ", ".join(str(run + 1) for run in sorted(runs))
        text += f"; {arch} run{'s' if len(runs) > 1 else ''} {numbers} resumed from there"
    return text


def eval_config(
    arch: str, *, runs: int, epochs: int, lr: float | None, batch_size: int, dsa: bool, seed: int,
    labels: str = "set",
) -> evaluate.EvalConfig:  # fmt: skip
    return evaluate.EvalConfig(
        arch=arch, runs=runs, epochs=epochs, lr=lr, batch_size=batch_size,
        dsa_strategy=augment.DEFAULT_STRATEGY if dsa else "none", seed=seed,
        labels=labels.lower(),
    )  # fmt: skip
