"""What ``ddpp distill`` and ``ddpp run`` share on screen: the distillation display (settings
table, iteration and evaluation bars) and the summary table."""

from __future__ import annotations

from dataclasses import asdict

from rich.table import Table

from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import evaluate
from ddpp_cli.engine.distill.config import ADDED_TO_TM
from ddpp_cli.engine.model_selection import DEFAULT_SELECTION, get_selection
from ddpp_cli.progress import milestone, percent


class DistillDisplay:
    """Turns distillation events into the settings table, an iteration bar and an eval bar."""

    def __init__(self, progress, origin: dict[str, str], quiet: bool) -> None:
        self.progress = progress
        self.origin = origin
        self.quiet = quiet
        self.iterations_task = None
        self.eval_task = None
        self.phase = "validation"
        self.last_val = "–"
        self.status = ""
        self.split = "val"  # "test" with --selection best-test: the split it is chosen on

    def _info(self) -> str:
        return f"{self.status}  {self.split} {self.last_val}"

    def __call__(self, event: object) -> None:
        p = self.progress
        match event:
            case distill_engine.DistillStarted():
                self.split = get_selection(event.config.selection).chosen_on
                if not self.quiet:
                    p.console.print(settings_table(event, self.origin))
                self.iterations_task = p.add_task(
                    "iterations",
                    total=event.config.iterations,
                    completed=event.start_iteration,
                    info="",
                )
                self.eval_task = p.add_task("evaluation", total=1, visible=False, info="")
            case distill_engine.IterationFinished():
                self.status = iteration_status(event)
                p.update(self.iterations_task, advance=1, info=self._info())
            case distill_engine.CheckpointSaved():
                milestone(p, self.iterations_task)  # in a log: a line at every checkpoint
            case distill_engine.ValidationStarted():
                what = "validation" if self.split == "val" else "test (selection)"
                self.phase = f"{what} @ {event.iteration}"
            case distill_engine.TestStarted():
                self.phase = "test"
            case evaluate.NetworkStarted():
                p.reset(self.eval_task, total=event.epochs, visible=True, info="")
                description = f"{self.phase} run {event.run + 1}/{event.runs}"
                p.update(self.eval_task, description=description)
            case evaluate.NetworkEpochFinished():
                p.update(self.eval_task, advance=1)
            case distill_engine.ValidationFinished():
                p.update(self.eval_task, visible=False)
                self.last_val = (
                    f"{percent(event.accuracy)} (best {percent(event.best_accuracy)} "
                    f"@ {event.best_iteration})"
                )
                p.update(self.iterations_task, info=self._info())
            case distill_engine.TestFinished():
                p.update(self.eval_task, visible=False)


def iteration_status(event: distill_engine.IterationFinished) -> str:
    """The iteration bar's numbers: loss, pruned fraction and α for a method that learns a step
    size (tm); else the loss and the method's loop counts (CAFE)."""
    if distill_engine.get_method(event.method).learns_step_size:
        return (
            f"loss {event.loss:.4f}  pruned {100 * event.pruned_fraction:.2f} %  lr {event.lr:.4g}"
        )
    return f"loss {event.loss:.4g}" + "".join(
        f"  {name.replace('_', ' ')} {value}"
        for name, value in event.details.items()
        if name in ("image_steps", "inner_epochs")
    )


def settings_table(event: distill_engine.DistillStarted, origin: dict[str, str]) -> Table:
    """Every resolved setting with where it came from, then the run's folder, buffer and data."""
    table = Table(title="ddpp distill: resolved settings", title_justify="left")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("from")
    method = event.config.method
    from_buffer = distill_engine.get_method(method).needs_buffer  # zca, train_subset: its own
    rows = {
        name: value
        for name, value in asdict(event.config).items()
        if method in distill_engine.METHOD_SETTINGS.get(name, (method,))
    }
    if "batch_syn" in rows and rows["batch_syn"] is None:
        rows["batch_syn"] = "all"
    for name, value in rows.items():
        source = event.derived.get(name) or origin.get(name, "default")
        if ADDED_TO_TM.get(name, ...) == value and source == "default":  # DATM's, off: as before
            continue
        if from_buffer and name in ("zca", "train_subset") and source != "user":
            source = "buffer" if source != "resume" else source
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value), source)
    table.add_section()
    table.add_row("run folder", str(event.folder), "resumed" if event.resumed else "new")
    if event.buffer is not None:
        table.add_row(
            "buffer",
            f"{event.buffer} ({event.experts} experts × {event.buffer_epochs} epochs)",
            "",
        )
    table.add_row(
        "data",
        f"{event.train_size} train / {event.val_size} validation / "
        f"{event.test_size} test ({event.preprocessing})",
        "",
    )
    table.add_row("parameters", f"{event.num_params:,}", "")
    table.add_row("device", event.device, "")
    return table


def summary_table(summary: distill_engine.DistillSummary) -> Table:
    table = Table(
        title=f"Distillation in {summary.folder}", title_justify="left", show_header=False
    )
    table.add_column("", style="bold")
    table.add_column("")
    if summary.test is not None:
        test = summary.test
        table.add_row(
            "test accuracy",
            f"[bold]{test.mean_std_text()} %[/] ({len(test.accuracies)} "
            f"run{'s' if len(test.accuracies) != 1 else ''} × "
            f"{test.protocol.get('epochs')} epochs, lr {test.lr:.4g}) on {summary.tested.name}",
        )
    if summary.best_val_accuracy is not None:
        table.add_row(
            "best validation",
            f"{percent(summary.best_val_accuracy)} at iteration {summary.best_iteration}",
        )
    rule = get_selection(summary.selection)
    if summary.best_iteration is not None and rule.name != DEFAULT_SELECTION:
        table.add_row("best test", f"at iteration {summary.best_iteration}")
    table.add_row("selection", rule.label)
    table.add_row("method", summary.method)
    table.add_row("labels", summary.labels)
    table.add_row("iterations", str(summary.iterations))
    if summary.final_lr is not None:
        table.add_row("learned lr", f"{summary.final_lr:.6g}")
    if summary.pruned_fraction:
        pf = summary.pruned_fraction
        table.add_row(
            "pruned fraction",
            f"{100 * pf['min']:.2f} – {100 * pf['max']:.2f} % (mean {100 * pf['mean']:.2f} %)",
        )
    table.add_row("time", f"{summary.seconds:.0f} s distilling")
    return table
