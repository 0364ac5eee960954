"""Progress displays shared by several commands: a buffer's bars, and ``ddpp run``'s stages
(with or without ``--compare``); each turns engine events into lines and bars."""

from __future__ import annotations

from ddpp_cli.commands._display import line, note
from ddpp_cli.commands._distilling import DistillDisplay
from ddpp_cli.commands._evaluation import EvalDisplay
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import compare as compare_engine
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import pipeline, presets
from ddpp_cli.engine.events import Notice
from ddpp_cli.progress import percent

# A run's stages that end with a result line (every --compare row does too).
RESULT_STAGES = ("evaluate", "baseline")


class BufferDisplay:
    """Turns buffer engine events into two progress bars (experts, epochs of the current one).

    With ``--parallel K`` several experts start together; the epochs bar follows the first one
    of the group and is labelled with the whole group.
    """

    def __init__(self, progress, device: str = "") -> None:
        self.progress = progress
        self.device = device
        self.experts_task = None
        self.epochs_task = None
        self.group: list[int] = []  # experts started and not yet finished

    def __call__(self, event: object) -> None:
        p = self.progress
        match event:
            case buffer_engine.BufferStarted():
                self._started(event)
            case buffer_engine.ExpertStarted():
                if not self.group:
                    # in a log, a line per finished epoch (log_each), however short
                    p.reset(
                        self.epochs_task, total=event.epochs, visible=True, info="", log_each=True
                    )
                self.group.append(event.index)
                label = "expert" + ("s" if len(self.group) > 1 else "")
                many = len(self.group) > 1
                indices = f"{self.group[0]}–{self.group[-1]}" if many else event.index
                p.update(self.epochs_task, description=f"{label} {indices}")
            case buffer_engine.EpochFinished():
                if not self.group or event.index == self.group[0]:
                    p.update(
                        self.epochs_task,
                        advance=1,
                        info=f"loss {event.train_loss:.3f}  test {percent(event.test_accuracy)}",
                    )
            case buffer_engine.ExpertFinished() if not event.record.resumed:
                if event.record.index in self.group:
                    self.group.remove(event.record.index)
                acc = event.record.test_accuracy[-1] if event.record.test_accuracy else None
                p.update(self.experts_task, advance=1, info=f"last expert {percent(acc)}")
            case Notice() if not p.disable:
                note(p.console, event.message)

    def _started(self, event: buffer_engine.BufferStarted) -> None:
        p = self.progress
        # an import without --experts learns how many experts there are only at its last file
        count = "every expert found" if event.total is None else f"{event.total} experts"
        if not p.disable:
            line(
                p.console,
                f"buffer [bold]{event.folder}[/]: {count} "
                f"({event.existing} done), {event.train_size} train / {event.test_size} test "
                f"images, {event.num_params:,} parameters, {event.preprocessing}"
                + (f", on {self.device}" if self.device else ""),
            )
        self.experts_task = p.add_task(
            "experts", total=event.total, completed=event.existing, info=""
        )
        self.epochs_task = p.add_task("epochs", total=1, visible=False, info="")


class RunDisplay:
    """One progress display for ``ddpp run``, with or without ``--compare``: the opening line, a
    numbered line per stage (a run's stage, or a comparison's buffer and rows), the bars of what
    the stage runs (buffer, distillation, evaluation), and a result line when a result is in."""

    def __init__(self, progress, plan: pipeline.RunPlan, quiet: bool, device: str) -> None:
        self.progress = progress
        self.plan = plan
        self.origin = {**{name: "preset" for name in presets.KEYS}, **plan.origin}
        self.row_origin = self.origin  # a --compare row's: the plan's and the row's own settings
        self.quiet = quiet
        self.device = device
        self.stage_display = None
        self.tasks_before: set = set()

    def __call__(self, event: object) -> None:
        p = self.progress
        match event:
            case pipeline.RunStarted() | compare_engine.CompareStarted() if not p.disable:
                line(p.console, self._opening(event))
            case pipeline.StageStarted(stage=name) | compare_engine.StepStarted(step=name):
                self._stage_started(name, event)
            case pipeline.StageFinished(stage=name) | compare_engine.StepFinished(step=name):
                self._stage_finished(name, event)
            case Notice() if not p.disable:
                note(p.console, event.message)
            case pipeline.RunStarted() | compare_engine.CompareStarted() | Notice():
                pass  # not shown with --quiet
            case distill_engine.DistillStarted():
                self.stage_display = DistillDisplay(p, self.row_origin, self.quiet)
                self.stage_display(event)
            case compare_engine.EvaluationStarted():
                self.stage_display = EvalDisplay(p)
            case _ if self.stage_display is not None:
                self.stage_display(event)

    def _opening(self, event: pipeline.RunStarted | compare_engine.CompareStarted) -> str:
        d = event.plan.distill
        if isinstance(event, compare_engine.CompareStarted):
            return (
                f"ddpp run --compare: {d.dataset} IPC {d.ipc}, profile {event.plan.profile}, "
                f"rows {', '.join(event.rows)}, on {self.device}; data from {event.data_folder}"
            )
        return (
            f"ddpp run: {d.dataset} IPC {d.ipc}, ε {d.eps:g}, profile {event.plan.profile}, on "
            f"{self.device}; data from {event.data_folder}"
        )

    def _stage_started(
        self, name: str, event: pipeline.StageStarted | compare_engine.StepStarted
    ) -> None:
        p = self.progress
        if not p.disable:
            line(p.console, f"[bold cyan][{event.index}/{event.total}] {name}[/]: {event.detail}")
        self.tasks_before = set(p.task_ids)
        self.stage_display = None  # a distillation's or a row's: from its first event on
        if name == "buffer":
            self.stage_display = BufferDisplay(p, self.device)
        elif name in RESULT_STAGES:
            self.stage_display = EvalDisplay(p)
        elif name in compare_engine.ROWS:
            self.row_origin = {**self.origin, **compare_engine.row_origin(self.plan, name)}

    def _stage_finished(
        self, name: str, event: pipeline.StageFinished | compare_engine.StepFinished
    ) -> None:
        p = self.progress
        for task in set(p.task_ids) - self.tasks_before:
            p.remove_task(task)
        self.stage_display = None
        if not p.disable and (name in RESULT_STAGES or name in compare_engine.ROWS):
            reused = isinstance(event, compare_engine.StepFinished) and event.reused
            done = "reused" if reused else f"{event.seconds:.0f} s"
            p.console.print(f"    {name}: {event.detail} ({done})", highlight=False)
