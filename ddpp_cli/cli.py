"""The ``ddpp`` command line: parse options, build a config, call the engine, render the result."""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ddpp_cli import __version__
from ddpp_cli.engine import (
    augment,
    baselines,
    data,
    distilled,
    evaluate,
    models,
    pipeline,
    trajectory,
)
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import visualize as visualize_engine
from ddpp_cli.engine.device import DEVICE_CHOICES, resolve_device
from ddpp_cli.engine.distributed import join_world
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice
from ddpp_cli.progress import make_progress, percent

app = typer.Typer(
    name="ddpp",
    help="Dataset distillation by trajectory matching with parameter pruning (DDPP/MTT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

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


# Options shared by several commands.
ARCHITECTURES = ", ".join(models.available())
DatasetOption = Annotated[
    str, typer.Option("--dataset", "-d", help=f"Dataset: {', '.join(data.available())}.")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding the dataset (default: the ddpp data folder's 'datasets').",
    ),
]
DownloadOption = Annotated[
    bool,
    typer.Option("--download/--no-download", help="Download torchvision datasets when missing."),
]
DeviceOption = Annotated[str, typer.Option("--device", help=f"Device: {DEVICE_CHOICES}.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for every random draw.")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or tables; print only the output path.")
]


class _BufferDisplay:
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
        if isinstance(event, trajectory.BufferStarted):
            if not p.disable:
                p.console.print(
                    f"buffer [bold]{event.folder}[/]: {event.total} experts "
                    f"({event.existing} done), {event.train_size} train / {event.test_size} test "
                    f"images, {event.num_params:,} parameters, {event.preprocessing}"
                    + (f", on {self.device}" if self.device else ""),
                    highlight=False,
                    soft_wrap=True,
                )
            self.experts_task = p.add_task(
                "experts", total=event.total, completed=event.existing, info=""
            )
            self.epochs_task = p.add_task("epochs", total=1, visible=False, info="")
        elif isinstance(event, trajectory.ExpertStarted):
            if not self.group:
                p.reset(self.epochs_task, total=event.epochs, visible=True, info="")
            self.group.append(event.index)
            label = "expert" + ("s" if len(self.group) > 1 else "")
            indices = f"{self.group[0]}–{self.group[-1]}" if len(self.group) > 1 else event.index
            p.update(self.epochs_task, description=f"{label} {indices}")
        elif isinstance(event, trajectory.EpochFinished):
            if not self.group or event.index == self.group[0]:
                p.update(
                    self.epochs_task,
                    advance=1,
                    info=f"loss {event.train_loss:.3f}  test {percent(event.test_accuracy)}",
                )
        elif isinstance(event, trajectory.ExpertFinished) and not event.record.resumed:
            if event.record.index in self.group:
                self.group.remove(event.record.index)
            acc = event.record.test_accuracy[-1] if event.record.test_accuracy else None
            p.update(self.experts_task, advance=1, info=f"last expert {percent(acc)}")
        elif isinstance(event, Notice) and not p.disable:
            p.console.print(f"[yellow]note:[/] {event.message}", highlight=False, soft_wrap=True)


ParallelOption = Annotated[
    int,
    typer.Option(
        "--parallel",
        help="Train K networks at once as one batched (vmapped) model, each with its own seed "
        "and data order (faster on GPUs; on CPUs one at a time is as fast).",
    ),
]


@app.command()
@user_errors
def buffer(
    dataset: DatasetOption = "cifar10",
    data_dir: DataDirOption = None,
    download: DownloadOption = True,
    arch: Annotated[
        str, typer.Option("--arch", help=f"Expert architecture: {ARCHITECTURES}.")
    ] = "convnet",
    experts: Annotated[int, typer.Option("--experts", help="Number of experts.")] = 100,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per expert.")] = 50,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate.")] = 0.01,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 256,
    zca: Annotated[
        bool | None,
        typer.Option("--zca/--no-zca", help="ZCA-whiten the data (default: on for CIFAR)."),
    ] = None,
    dsa: Annotated[
        bool, typer.Option("--dsa/--no-dsa", help="Differentiable augmentation while training.")
    ] = True,
    train_subset: Annotated[
        int | None,
        typer.Option("--train-subset", help="Train on a stratified, seeded subset of N images."),
    ] = None,
    test_subset: Annotated[
        int | None,
        typer.Option("--test-subset", help="Test on a stratified, seeded subset of N images."),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Resize folder datasets to this size.")
    ] = None,
    import_dir: Annotated[
        Path | None,
        typer.Option("--import", help="Convert MTT replay_buffer_*.pt files from this folder."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Buffer folder (default: the ddpp data folder's 'buffers')."),
    ] = None,
    parallel: ParallelOption = 1,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Train expert trajectories (resumable; rerun the same command to continue).

    Under torchrun the ranks split the experts; rank 0 prints.
    """
    use_zca = data.info(dataset).default_zca if zca is None else zca
    folder = out_dir or trajectory.default_buffer_dir(dataset, arch, use_zca)
    training = import_dir is None
    world, torch_device = join_world(resolve_device(device)) if training else (None, None)
    progress = make_progress(err, disable=quiet or (training and not world.is_main))
    if import_dir is not None:
        with progress:
            summary = trajectory.import_mtt(
                import_dir,
                folder,
                dataset=dataset,
                arch=arch,
                use_zca=use_zca,
                data_root=data_dir,
                download=download,
                image_size=image_size,
                on_event=_BufferDisplay(progress),
            )
    else:
        config = trajectory.BufferConfig(
            dataset=dataset,
            arch=arch,
            experts=experts,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            dsa_strategy=trajectory.augment.DEFAULT_STRATEGY if dsa else "none",
            zca=use_zca,
            train_subset=train_subset,
            test_subset=test_subset,
            image_size=image_size,
            seed=seed,
        )
        with progress:
            summary = trajectory.train_buffer(
                config,
                folder,
                data_root=data_dir,
                download=download,
                device=torch_device,
                on_event=_BufferDisplay(progress, str(torch_device)),
                parallel=parallel,
                world=world,
            )
        if not world.is_main:
            return
    if quiet:
        out.print(str(summary.folder), highlight=False, soft_wrap=True)
        return
    table = Table(title=f"Expert trajectories in {summary.folder}")
    table.add_column("expert", justify="right")
    table.add_column("final test acc", justify="right")
    table.add_column("best test acc", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("file")
    for record in summary.experts:
        accs = record.test_accuracy
        table.add_row(
            str(record.index),
            percent(accs[-1] if accs else None),
            percent(max(accs) if accs else None),
            "resumed"
            if record.resumed
            else ("–" if record.seconds is None else f"{record.seconds:.0f}"),
            record.path.name,
        )
    out.print(table)
    out.print(f"manifest: {summary.manifest}", highlight=False, soft_wrap=True)
    if summary.zca is not None:
        out.print(f"zca:      {summary.zca}", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------ distill


class _DistillDisplay:
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

    def _info(self) -> str:
        return f"{self.status}  val {self.last_val}"

    def __call__(self, event: object) -> None:
        p = self.progress
        if isinstance(event, distill_engine.DistillStarted):
            if not self.quiet:
                p.console.print(_settings_table(event, self.origin))
            self.iterations_task = p.add_task(
                "iterations",
                total=event.config.iterations,
                completed=event.start_iteration,
                info="",
            )
            self.eval_task = p.add_task("evaluation", total=1, visible=False, info="")
        elif isinstance(event, distill_engine.IterationFinished):
            self.status = (
                f"loss {event.loss:.4f}  pruned {100 * event.pruned_fraction:.2f} %  "
                f"lr {event.lr:.4g}"
            )
            p.update(self.iterations_task, advance=1, info=self._info())
        elif isinstance(event, distill_engine.ValidationStarted):
            self.phase = f"validation @ {event.iteration}"
        elif isinstance(event, distill_engine.TestStarted):
            self.phase = "test"
        elif isinstance(event, evaluate.RunStarted):
            p.reset(self.eval_task, total=event.epochs, visible=True, info="")
            p.update(self.eval_task, description=f"{self.phase} run {event.run + 1}/{event.runs}")
        elif isinstance(event, evaluate.EpochFinished):
            p.update(self.eval_task, advance=1)
        elif isinstance(event, distill_engine.ValidationFinished):
            p.update(self.eval_task, visible=False)
            self.last_val = (
                f"{percent(event.accuracy)} (best {percent(event.best_accuracy)} "
                f"@ {event.best_iteration})"
            )
            p.update(self.iterations_task, info=self._info())
        elif isinstance(event, distill_engine.TestFinished):
            p.update(self.eval_task, visible=False)


def _settings_table(event, origin: dict[str, str]) -> Table:
    config = event.config
    table = Table(title="ddpp distill: resolved settings", title_justify="left")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("from")
    rows = asdict(config)
    if rows["batch_syn"] is None:
        rows["batch_syn"] = "all"
    for name, value in rows.items():
        source = event.derived.get(name) or origin.get(name, "default")  # issue 14: derived
        if name in ("zca", "train_subset") and source != "user":
            source = "buffer" if source != "resume" else source
        table.add_row(name, str(value), source)
    table.add_section()
    table.add_row("run folder", str(event.folder), "resumed" if event.resumed else "new")
    table.add_row(
        "buffer", f"{event.buffer} ({event.experts} experts × {event.buffer_epochs} epochs)", ""
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


def _distill_summary_table(summary) -> Table:
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
    if summary.best_iteration is not None:
        table.add_row(
            "best validation",
            f"{percent(summary.best_val_accuracy)} at iteration {summary.best_iteration}",
        )
    table.add_row("iterations", str(summary.iterations))
    table.add_row("learned lr", f"{summary.final_lr:.6g}")
    if summary.pruned_fraction:
        pf = summary.pruned_fraction
        table.add_row(
            "pruned fraction",
            f"{100 * pf['min']:.2f} – {100 * pf['max']:.2f} % (mean {100 * pf['mean']:.2f} %)",
        )
    table.add_row("time", f"{summary.seconds:.0f} s distilling")
    return table


def _print_distill_paths(summary) -> None:
    for label, path in (
        ("distilled", summary.distilled),
        ("best", summary.best),
        ("checkpoint", summary.checkpoint),
        ("metrics", summary.metrics),
        ("summary", summary.summary),
    ):
        if path is not None:
            out.print(f"{label + ':':<12}{path}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
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
def _distilling(progress, resume_hint: str) -> Iterator[None]:
    """Around a distillation: SIGTERM acts as Ctrl-C; a diverged run exits with status 1 and an
    interrupted one with 130, each with one line (``resume_hint`` says how to continue)."""
    try:
        with _sigterm_as_interrupt(), progress:
            yield
    except distill_engine.DivergedError as exc:
        err.print(f"[bold red]diverged:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted[/]; {resume_hint}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


@app.command("distill")
@user_errors
def distill_command(
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help=f"Dataset: {', '.join(data.available())}.")
    ] = None,
    ipc: Annotated[int | None, typer.Option("--ipc", help="Synthetic images per class.")] = None,
    eps: Annotated[
        float | None,
        typer.Option("--eps", help="Pruning threshold ε in [0, 1); 0 = plain MTT. [default: 0.1]"),
    ] = None,
    buffer_dir: Annotated[
        Path | None,
        typer.Option(
            "--buffer",
            help="Buffer folder (default: the ddpp data folder's buffer for --dataset/--arch/ZCA).",
        ),
    ] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="Architecture of the buffer. [default: convnet]")
    ] = None,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Distillation iterations. [default: 5000]")
    ] = None,
    syn_steps: Annotated[
        int | None, typer.Option("--syn-steps", help="Student steps N per iteration (preset).")
    ] = None,
    expert_epochs: Annotated[
        int | None, typer.Option("--expert-epochs", help="Expert epochs M to match (preset).")
    ] = None,
    max_start_epoch: Annotated[
        int | None,
        typer.Option("--max-start-epoch", help="Start epochs drawn from 0…T⁺−1 (preset)."),
    ] = None,
    batch_syn: Annotated[
        int | None,
        typer.Option("--batch-syn", help="Synthetic minibatch per step; 0 = all (preset)."),
    ] = None,
    lr_img: Annotated[
        float | None, typer.Option("--lr-img", help="SGD lr of the images (preset).")
    ] = None,
    lr_lr: Annotated[
        float | None, typer.Option("--lr-lr", help="SGD lr of the learned step size (preset).")
    ] = None,
    auto_lr: Annotated[
        bool,
        typer.Option(
            "--auto-lr",
            help="Derive --lr-teacher/--lr-lr from the buffer and the first gradient on CIFAR "
            "and Tiny ImageNet too (always done for sets without a paper row).",
        ),
    ] = False,
    lr_teacher: Annotated[
        float | None,
        typer.Option("--lr-teacher", help="Initial learned step size α (preset)."),
    ] = None,
    init: Annotated[
        str | None, typer.Option("--init", help="Initial images: real or noise. [default: real]")
    ] = None,
    zca: Annotated[
        bool | None,
        typer.Option(
            "--zca/--no-zca",
            help="Which default buffer to use (default: preset; with --buffer, the buffer's).",
        ),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option("--eval-every", help="Validate every N iterations; 0 = never. [default: 500]"),
    ] = None,
    eval_runs: Annotated[
        int | None, typer.Option("--eval-runs", help="Networks per validation. [default: 3]")
    ] = None,
    eval_epochs: Annotated[
        int | None,
        typer.Option("--eval-epochs", help="Epochs per validation/test network. [default: 1000]"),
    ] = None,
    test_runs: Annotated[
        int | None,
        typer.Option("--test-runs", help="Networks for the final test; 0 = skip. [default: 5]"),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option("--checkpoint-every", help="Checkpoint every N iterations. [default: 100]"),
    ] = None,
    snapshot_every: Annotated[
        int | None,
        typer.Option(
            "--snapshot-every",
            help="Keep the images every N iterations in RUN/snapshots/ (for 'ddpp visualize "
            "--animate'); 0 = never. [default: 0]",
        ),
    ] = None,
    val_size: Annotated[
        int | None,
        typer.Option(
            "--val-size",
            help="Validation images held out of the training split (default: 10 %, at most 5000).",
        ),
    ] = None,
    train_subset: Annotated[
        int | None,
        typer.Option("--train-subset", help="Stratified training subset (default: the buffer's)."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the run in this folder.")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run folder (default: the ddpp data folder's 'runs'); "
            "resumed if it holds a checkpoint.",
        ),
    ] = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = True,
    device: DeviceOption = "auto",
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for every random draw.")] = None,
    unroll: Annotated[
        str | None,
        typer.Option(
            "--unroll",
            help="graph: keep the unrolled graph (fastest; memory grows with --syn-steps); "
            "memory: recompute one step at a time in reverse (constant memory, same gradients, "
            "about 1.3x the time). [default: graph]",
        ),
    ] = None,
    amp: Annotated[
        str | None,
        typer.Option(
            "--amp",
            help="off, or bf16: autocast the student's forward to bfloat16 (for GPUs; loss, "
            "pruning and updates stay float32). [default: off]",
        ),
    ] = None,
    compile_step: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the per-step gradient (falls back with a notice if it cannot "
            "compile). [default: no-compile]",
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="Channels-last activations (helps on GPUs, slower on CPUs). "
            "[default: no-channels-last]",
        ),
    ] = None,
    quiet: QuietOption = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")
    ] = False,
) -> None:
    """Distill a dataset from a buffer: trajectory matching with parameter pruning.

    Ctrl-C or SIGTERM writes a checkpoint and exits with status 130; a diverged run exits with 1.
    """
    given = {
        "dataset": dataset, "ipc": ipc, "eps": eps, "arch": arch, "iterations": iterations,
        "syn_steps": syn_steps, "expert_epochs": expert_epochs, "max_start_epoch": max_start_epoch,
        "batch_syn": batch_syn, "lr_img": lr_img, "lr_lr": lr_lr, "lr_teacher": lr_teacher,
        "init": init, "zca": zca, "eval_every": eval_every, "eval_runs": eval_runs,
        "eval_epochs": eval_epochs, "test_runs": test_runs, "checkpoint_every": checkpoint_every,
        "snapshot_every": snapshot_every,
        "val_size": val_size, "train_subset": train_subset, "seed": seed, "unroll": unroll,
        "amp": amp, "compile": compile_step, "channels_last": channels_last,
    }  # fmt: skip
    overrides = {name: value for name, value in given.items() if value is not None}
    all_images = overrides.get("batch_syn") == 0  # --batch-syn 0: every image each step
    if all_images:
        del overrides["batch_syn"]
    if resume is not None and out_dir is not None and resume.resolve() != out_dir.resolve():
        raise DdppError(f"--resume {resume} and --out {out_dir} name different folders; drop one.")
    folder = resume or out_dir
    torch_device = resolve_device(device)
    if folder is not None and (folder / distill_engine.CHECKPOINT_NAME).is_file():
        saved = distill_engine.saved_config(folder)
        origin = {name: "resume" for name in asdict(saved)}
        config = replace(saved, **overrides)
    elif resume is not None:
        raise DdppError(
            f"{resume} holds no {distill_engine.CHECKPOINT_NAME}; it is not a run to resume."
        )
    else:
        if dataset is None or ipc is None:
            raise DdppError("--dataset and --ipc are needed to start a run (or --resume RUN).")
        rest = {k: v for k, v in overrides.items() if k not in ("dataset", "ipc")}
        config = distill_engine.DistillConfig.from_preset(dataset, ipc, derive=auto_lr, **rest)
        origin = {name: "preset" for name in distill_engine.presets.KEYS}
        folder = out_dir or distill_engine.default_run_dir(config)
    if all_images:
        config = replace(config, batch_syn=None)
    origin.update({name: "user" for name in overrides})
    progress = make_progress(err, disable=quiet)
    display = _DistillDisplay(progress, origin, quiet or json_out)

    def on_event(event: object) -> None:
        if isinstance(event, Notice):
            err.print(f"[yellow]note:[/] {event.message}", highlight=False, soft_wrap=True)
        display(event)

    resume_hint = f"checkpoint saved in {folder}; continue with 'ddpp distill --resume {folder}'."
    with _distilling(progress, resume_hint):
        summary = distill_engine.distill(
            config, folder, buffer=buffer_dir, data_root=data_dir, download=download,
            device=torch_device, on_event=on_event,
        )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(distill_engine.summary_json(summary)))
        return
    if quiet:
        out.print(str(summary.folder), highlight=False, soft_wrap=True)
        return
    out.print(_distill_summary_table(summary))
    _print_distill_paths(summary)


# ------------------------------------------------------------------------ evaluate, crossarch

SetOrRunArgument = Annotated[
    Path | None,
    typer.Argument(
        help="A distilled-set file, or a 'ddpp distill' run folder (best.safetensors, else "
        "distilled.safetensors).",
        show_default=False,
    ),
]
RunsOption = Annotated[
    int, typer.Option("--runs", help="Networks trained, each with its own seed.")
]
EvalEpochsOption = Annotated[int, typer.Option("--epochs", help="Training epochs per network.")]
EvalLrOption = Annotated[
    float | None,
    typer.Option("--lr", help="Learning rate (default: the set's learned lr, else 0.01)."),
]
EvalBatchOption = Annotated[int, typer.Option("--batch-size", help="Training batch size.")]
EvalDsaOption = Annotated[
    bool, typer.Option("--dsa/--no-dsa", help="Differentiable augmentation while training.")
]
ZcaFileOption = Annotated[
    Path | None,
    typer.Option(
        "--zca",
        help="ZCA file (a buffer's zca.safetensors): for a ZCA set whose file moved; for a "
        "baseline, whiten with it instead of fitting a new one.",
    ),
]
TestSubsetOption = Annotated[
    int | None,
    typer.Option("--test-subset", help="Test on a stratified, seeded subset of N images."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else there.")
]


class _EvalDisplay:
    """Turns evaluation events into two progress bars (runs of an architecture, epochs).

    With ``--parallel K`` several runs start together; the epochs bar follows the first one of
    the group and is labelled with the whole group.
    """

    def __init__(self, progress) -> None:
        self.progress = progress
        self.runs_task = None
        self.epochs_task = None
        self.arch = None
        self.group: list[int] = []  # runs started and not yet finished

    def __call__(self, event: object) -> None:
        p = self.progress
        if isinstance(event, evaluate.RunStarted):
            if event.arch != self.arch:
                self.arch = event.arch
                self.group = []
                self.runs_task = p.add_task(f"{event.arch} runs", total=event.runs, info="")
            if self.epochs_task is None:
                self.epochs_task = p.add_task("epochs", total=event.epochs, info="")
            if not self.group:
                p.reset(self.epochs_task, total=event.epochs, info="")
            self.group.append(event.run)
            runs = f"{self.group[0] + 1}–{event.run + 1}" if len(self.group) > 1 else event.run + 1
            label = "runs" if len(self.group) > 1 else "run"
            p.update(self.epochs_task, description=f"{label} {runs}/{event.runs}")
        elif isinstance(event, evaluate.EpochFinished):
            if not self.group or event.run == self.group[0]:
                p.update(self.epochs_task, advance=1)
        elif isinstance(event, evaluate.RunFinished):
            if event.run in self.group:
                self.group.remove(event.run)
            note = "  [yellow]diverged[/]" if event.diverged else ""
            p.update(self.runs_task, advance=1, info=f"last {percent(event.accuracy)}{note}")
        elif isinstance(event, Notice) and not p.disable:
            p.console.print(f"[yellow]note:[/] {event.message}", highlight=False, soft_wrap=True)


def _protocol_line(result: evaluate.EvalResult) -> str:
    p = result.protocol
    dsa = "off" if p["dsa_strategy"] == "none" else "on"
    runs = f"{p['runs']} run" + ("s" if p["runs"] != 1 else "")
    return (
        f"protocol: {p['arch']}, {p['epochs']} epochs, lr {result.lr:g} ({p['lr_source']}), "
        f"{p['lr_schedule']}, batch {p['batch_size']}, SGD momentum {p['momentum']:g}, "
        f"weight decay {p['weight_decay']:g}, DSA {dsa}, {runs} from seed "
        f"{p['seed']}; tested on {p['test_size']} images ({p.get('preprocessing', '?')}); "
        "± is the population std"
    )


def _print_result(title: str, result: evaluate.EvalResult) -> None:
    table = Table(title=title)
    table.add_column("run", justify="right")
    table.add_column("test accuracy", justify="right")
    for run, acc in enumerate(result.accuracies):
        diverged = run in result.protocol.get("diverged_runs", [])
        table.add_row(str(run + 1), percent(acc) + (" (diverged)" if diverged else ""))
    table.add_section()
    table.add_row("mean ± std", f"[bold]{result.mean_std_text()} %[/]")
    out.print(table)
    out.print(_protocol_line(result), highlight=False, soft_wrap=True)
    out.print(f"time: {result.seconds:.0f} s", highlight=False)


def _set_label(path: Path, distilled_set) -> str:
    return f"{path} ({distilled_set.source}, {distilled_set.dataset}, IPC {distilled_set.ipc})"


@app.command("evaluate")
@user_errors
def evaluate_command(
    target: SetOrRunArgument = None,
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="Network to train (default: the set's, else convnet)."),
    ] = None,
    runs: RunsOption = 5,
    epochs: EvalEpochsOption = 1000,
    lr: EvalLrOption = None,
    batch_size: EvalBatchOption = 256,
    dsa: EvalDsaOption = True,
    zca_file: ZcaFileOption = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline", help="Evaluate a coreset of real images instead: random or herding."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help=f"Baseline dataset: {', '.join(data.available())}."),
    ] = None,
    ipc: Annotated[int | None, typer.Option("--ipc", help="Baseline images per class.")] = None,
    no_zca: Annotated[
        bool,
        typer.Option(
            "--no-zca", help="Baseline: normalise instead of ZCA (the non-CIFAR default)."
        ),
    ] = False,
    train_subset: Annotated[
        int | None,
        typer.Option("--train-subset", help="Baseline: pick from a stratified subset of N images."),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option("--save", help="Baseline: also write the coreset as a distilled-set file."),
    ] = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = True,
    test_subset: TestSubsetOption = None,
    parallel: ParallelOption = 1,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train fresh networks on a distilled set (or a baseline coreset) and test them.

    Under torchrun the ranks split the runs; rank 0 prints.
    """
    baseline_only = {
        "--dataset": dataset, "--ipc": ipc, "--train-subset": train_subset, "--save": save,
        "--no-zca": no_zca or None,
    }  # fmt: skip
    if baseline is None:
        given = [flag for flag, value in baseline_only.items() if value is not None]
        if given:
            raise DdppError(f"{', '.join(given)} only apply with --baseline random|herding.")
        if target is None:
            raise DdppError(
                "nothing to evaluate: pass a distilled-set file or run folder, or "
                "--baseline random|herding --dataset D --ipc K."
            )
    elif target is not None:
        raise DdppError(f"pass either a set ({target}) or --baseline, not both.")
    elif dataset is None or ipc is None:
        raise DdppError("--baseline needs --dataset D and --ipc K.")

    world, torch_device = join_world(resolve_device(device))
    progress = make_progress(err, disable=quiet or not world.is_main)
    saved: Path | None = None
    if baseline is None:
        path = evaluate.find_set(target)
        distilled_set = distilled.load(path)
        default_arch = distilled_set.arch if distilled_set.arch in models.available() else "convnet"
        config = evaluate.EvalConfig(
            arch=arch or default_arch, runs=runs, epochs=epochs, lr=lr, batch_size=batch_size,
            dsa_strategy=augment.DEFAULT_STRATEGY if dsa else "none", seed=seed,
        )  # fmt: skip
        title = f"Evaluation of {_set_label(path, distilled_set)} on {torch_device}"
        with progress:
            result = evaluate.evaluate_set(
                distilled_set, config, data_root=data_dir, download=download, zca_path=zca_file,
                test_subset=test_subset, device=torch_device, on_event=_EvalDisplay(progress),
                parallel=parallel, world=world,
            )  # fmt: skip
        payload = {"set": str(path), **result.to_json()}
    else:
        method = baseline.strip().lower()
        config = evaluate.EvalConfig(
            arch=arch or "convnet", runs=runs, epochs=epochs, lr=lr, batch_size=batch_size,
            dsa_strategy=augment.DEFAULT_STRATEGY if dsa else "none", seed=seed,
        )  # fmt: skip
        baseline_config = baselines.BaselineConfig(
            method=method, dataset=dataset, ipc=ipc, zca=False if no_zca else None,
            train_subset=train_subset, seed=seed,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="ddpp-zca-") as scratch:
            zca_out = (
                save.with_name(f"{save.stem}.zca.safetensors")
                if save is not None and world.is_main  # one rank writes the user's files
                else Path(scratch) / trajectory.ZCA_NAME
            )
            prepared = baselines.prepare_baseline(
                baseline_config, data_root=data_dir, download=download, zca_path=zca_file,
                zca_out=zca_out, test_subset=test_subset, eval_seed=seed,
            )  # fmt: skip
            if save is not None and world.is_main:
                saved = distilled.save(save, prepared.make_set(prepared.indices(0, torch_device)))
            with progress:
                result, _ = baselines.evaluate_baseline(
                    prepared, config, device=torch_device, on_event=_EvalDisplay(progress),
                    parallel=parallel, world=world,
                )  # fmt: skip
        title = f"Evaluation of the {method} baseline ({result.protocol['dataset']}, IPC {ipc})"
        payload = {"set": None if saved is None else str(saved), **result.to_json()}
    if not world.is_main:
        return
    if json_out:
        typer.echo(json.dumps(payload))
        return
    if quiet:
        out.print(f"{result.mean_std_text()} %", highlight=False)
        if saved is not None:
            out.print(str(saved), highlight=False, soft_wrap=True)
        return
    _print_result(title, result)
    if saved is not None:
        out.print(f"coreset: {saved}", highlight=False, soft_wrap=True)
        if prepared.zca_path is not None and zca_file is None:
            out.print(f"zca:     {prepared.zca_path}", highlight=False, soft_wrap=True)


@app.command("crossarch")
@user_errors
def crossarch_command(
    target: SetOrRunArgument = None,
    archs: Annotated[
        str, typer.Option("--archs", help=f"Comma-separated architectures: {ARCHITECTURES}.")
    ] = "convnet,alexnet,vgg11,resnet18",
    runs: RunsOption = 5,
    epochs: EvalEpochsOption = 1000,
    lr: EvalLrOption = None,
    batch_size: EvalBatchOption = 256,
    dsa: EvalDsaOption = True,
    zca_file: ZcaFileOption = None,
    data_dir: DataDirOption = None,
    download: DownloadOption = True,
    test_subset: TestSubsetOption = None,
    parallel: ParallelOption = 1,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    json_out: JsonOption = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the table as Markdown on stdout.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Evaluate one set with several architectures (like the paper's Table III).

    Under torchrun the ranks split the runs of each architecture; rank 0 prints.
    """
    if target is None:
        raise DdppError("pass a distilled-set file or a run folder to evaluate.")
    if json_out and markdown:
        raise DdppError("--json and --markdown both claim stdout; pass one of them.")
    names = [name.strip().lower() for name in archs.split(",") if name.strip()]
    path = evaluate.find_set(target)
    distilled_set = distilled.load(path)
    config = evaluate.EvalConfig(
        runs=runs, epochs=epochs, lr=lr, batch_size=batch_size,
        dsa_strategy=augment.DEFAULT_STRATEGY if dsa else "none", seed=seed,
    )  # fmt: skip
    world, torch_device = join_world(resolve_device(device))
    progress = make_progress(err, disable=quiet or not world.is_main)
    with progress:
        results = evaluate.crossarch(
            distilled_set, names, config, data_root=data_dir, download=download,
            zca_path=zca_file, test_subset=test_subset, device=torch_device,
            on_event=_EvalDisplay(progress), parallel=parallel, world=world,
        )  # fmt: skip
    if not world.is_main:
        return
    if json_out:
        payload = {
            "set": str(path),
            "archs": list(results),
            "results": {name: result.to_json() for name, result in results.items()},
        }
        typer.echo(json.dumps(payload))
        return
    label = f"{distilled_set.source} IPC {distilled_set.ipc}"
    if markdown:
        typer.echo("| set | " + " | ".join(results) + " |")
        typer.echo("|---|" + "---:|" * len(results))
        typer.echo(f"| {label} | " + " | ".join(r.mean_std_text() for r in results.values()) + " |")
        return
    if quiet:
        for name, result in results.items():
            out.print(f"{name}: {result.mean_std_text()} %", highlight=False)
        return
    table = Table(
        title=f"Cross-architecture test accuracy (%) of {_set_label(path, distilled_set)}"
    )
    table.add_column("set")
    for name in results:
        table.add_column(name, justify="right")
    table.add_row(label, *(r.mean_std_text() for r in results.values()))
    out.print(table)
    first = next(iter(results.values()))
    out.print(
        _protocol_line(first).replace(f"{first.arch}, ", "each architecture, ", 1),
        highlight=False,
        soft_wrap=True,
    )
    for name, result in results.items():
        runs_text = ", ".join(percent(a) for a in result.accuracies)
        out.print(f"{name}: {runs_text}  ({result.seconds:.0f} s)", highlight=False)


# ---------------------------------------------------------------------------------- visualize


@app.command("visualize")
@user_errors
def visualize_command(
    target: Annotated[
        Path,
        typer.Argument(
            help="A distilled-set file, or a 'ddpp distill' run folder (best.safetensors, else "
            "distilled.safetensors; metrics.jsonl for --curves).",
            show_default=False,
        ),
    ],
    grid_out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the image grid here (.png, .jpg, .webp). Default when no other output "
            "is asked for: <set>-grid.png next to the set.",
        ),
    ] = None,
    clip: Annotated[
        bool,
        typer.Option(
            "--clip", help="MTT's clipped view: each image clamped to mean ± 2.5 std, stretched."
        ),
    ] = False,
    upsample: Annotated[
        int, typer.Option("--upsample", help="Enlarge each image K times (nearest neighbour).")
    ] = 1,
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="Grid of these classes only: indices or names, e.g. 0,3,7."),
    ] = None,
    max_per_row: Annotated[
        int, typer.Option("--max-per-row", help="Images per row before a class wraps.")
    ] = 10,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Write every image as DIR/NN_<class>/NNNN.png (a torchvision ImageFolder) plus "
            "DIR/set.json with the labels and learned lr.",
        ),
    ] = None,
    curves: Annotated[
        Path | None,
        typer.Option(
            "--curves",
            help="Draw a run's loss, pruned fraction, learned lr and validation accuracy (PNG).",
        ),
    ] = None,
    animate: Annotated[
        Path | None,
        typer.Option(
            "--animate",
            help="A GIF of the class grid over a run, from the snapshots 'ddpp distill "
            "--snapshot-every N' kept.",
        ),
    ] = None,
    zca_file: Annotated[
        Path | None,
        typer.Option("--zca", help="The buffer's zca.safetensors, for a ZCA set whose file moved."),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Pictures of a distilled set or run: class grid, ImageFolder export, curves, animation."""
    draw_grid = grid_out is not None or (export is None and curves is None and animate is None)
    # Read and check every input before writing anything.
    set_path, distilled_set, chosen, metrics = None, None, None, None
    for path in (grid_out, curves, animate):
        if path is not None:
            visualize_engine.image_format(path)
    if draw_grid or export is not None:
        set_path = evaluate.find_set(target)
        distilled_set = distilled.load(set_path)
        chosen = visualize_engine.parse_classes(classes, distilled_set.class_names)
        if grid_out is None:
            grid_out = set_path.with_name(f"{set_path.stem}-grid.png")
    if curves is not None:
        metrics = visualize_engine.read_metrics(target)
    if animate is not None:
        snapshots = visualize_engine.animation_sources(target, animate)
        first = distilled.load(snapshots[0])
        animate_classes = visualize_engine.parse_classes(classes, first.class_names)

    def written(label: str, path: Path, note: str) -> None:
        text = str(path) if quiet else f"{label:<7} {path}  {note}"
        out.print(text, highlight=False, markup=False, soft_wrap=True)

    if draw_grid:
        layout = visualize_engine.grid_layout(
            distilled_set, classes=chosen, max_per_row=max_per_row, upsample=upsample
        )
        image = visualize_engine.class_grid(
            distilled_set, classes=chosen, max_per_row=max_per_row, clip=clip,
            upsample=upsample, zca_path=zca_file,
        )  # fmt: skip
        visualize_engine.save_image(image, grid_out)
        written(
            "grid:", grid_out,
            f"({len(layout.classes)} classes × up to {max(layout.counts)} images of {set_path}, "
            f"{image.width}×{image.height} px{', clipped' if clip else ''})",
        )  # fmt: skip
    if export is not None:
        manifest = visualize_engine.export_folder(distilled_set, export, zca_path=zca_file)
        written(
            "export:", export,
            f"({len(manifest['files'])} PNGs in {len(manifest['folders'])} class folders, "
            f"{visualize_engine.EXPORT_MANIFEST})",
        )  # fmt: skip
    if curves is not None:
        run_name = (target if target.is_dir() else target.parent).resolve().name
        image = visualize_engine.curves_image(metrics, title=f"ddpp distill run {run_name}")
        visualize_engine.save_image(image, curves)
        written("curves:", curves, f"({len(metrics)} metrics records)")
    if animate is not None:
        visualize_engine.animation(
            target, animate, upsample=upsample, clip=clip, classes=animate_classes,
            max_per_row=max_per_row, zca_path=zca_file,
        )  # fmt: skip
        written("animate:", animate, f"({len(snapshots)} frames from {target / 'snapshots'})")


# ---------------------------------------------------------------------------------------- run


class _RunDisplay:
    """One progress display for a whole ``ddpp run``: a stage line, then each stage's own bars."""

    def __init__(self, progress, origin: dict[str, str], quiet: bool, device: str) -> None:
        self.progress = progress
        self.origin = origin
        self.quiet = quiet
        self.device = device
        self.stage_display = None
        self.tasks_before: set = set()

    def __call__(self, event: object) -> None:
        p = self.progress
        if isinstance(event, pipeline.RunStarted):
            if not p.disable:
                d = event.plan.distill
                p.console.print(
                    f"ddpp run: {d.dataset} IPC {d.ipc}, ε {d.eps:g}, profile "
                    f"{event.plan.profile}, on {self.device}; data from {event.data_folder}",
                    highlight=False,
                    soft_wrap=True,
                )
        elif isinstance(event, pipeline.StageStarted):
            if not p.disable:
                p.console.print(
                    f"[bold cyan][{event.index}/{event.total}] {event.stage}[/]: {event.detail}",
                    highlight=False,
                    soft_wrap=True,
                )
            self.tasks_before = set(p.task_ids)
            if event.stage == "buffer":
                self.stage_display = _BufferDisplay(p, self.device)
            elif event.stage == "distill":
                self.stage_display = _DistillDisplay(p, self.origin, self.quiet)
            elif event.stage in ("evaluate", "baseline"):
                self.stage_display = _EvalDisplay(p)
            else:
                self.stage_display = None
        elif isinstance(event, pipeline.StageFinished):
            for task in set(p.task_ids) - self.tasks_before:
                p.remove_task(task)
            self.stage_display = None
            if not p.disable and event.stage in ("evaluate", "baseline"):
                p.console.print(
                    f"    {event.stage}: {event.detail} ({event.seconds:.0f} s)", highlight=False
                )
        elif isinstance(event, Notice):
            if not p.disable:
                p.console.print(
                    f"[yellow]note:[/] {event.message}", highlight=False, soft_wrap=True
                )
        elif self.stage_display is not None:
            self.stage_display(event)


def _run_summary_table(summary: pipeline.RunSummary) -> Table:
    plan = summary.plan
    table = Table(
        title=f"ddpp run: {plan.distill.dataset}, IPC {plan.distill.ipc}, ε {plan.distill.eps:g}, "
        f"profile {plan.profile}",
        title_justify="left",
    )
    table.add_column("set")
    table.add_column("test accuracy", justify="right")
    table.add_column("runs")
    result, baseline = summary.evaluation, summary.baseline
    source = "MTT, ε 0" if plan.distill.eps == 0 else f"DDPP, ε {plan.distill.eps:g}"
    for label, value in ((f"distilled ({source})", result), ("random real images", baseline)):
        table.add_row(
            label,
            f"[bold]{value.mean_std_text()} %[/]",
            " / ".join(percent(a) for a in value.accuracies),
        )
    table.add_section()
    color = "green" if summary.gain > 0 else "red"
    table.add_row("gain", f"[{color}]{100 * summary.gain:+.2f} points[/]", "")
    return table


def _run_protocol_lines(summary: pipeline.RunSummary) -> list[str]:
    result, baseline = summary.evaluation, summary.baseline
    p = result.protocol
    times = ", ".join(f"{stage} {secs:.0f} s" for stage, secs in summary.seconds.items())
    return [
        f"protocol: {p['arch']}, {p['epochs']} epochs, lr {result.lr:.4g} (learned) / "
        f"{baseline.lr:g} (baseline), DSA {'off' if p['dsa_strategy'] == 'none' else 'on'}, "
        f"same seeds; tested on the same {p['test_size']} images; ± is the population std",
        f"time: {sum(summary.seconds.values()) / 60:.1f} min ({times})",
    ]


@app.command("run")
@user_errors
def run_command(
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help=f"Dataset: {', '.join(data.available())}.")
    ],
    ipc: Annotated[int, typer.Option("--ipc", help="Synthetic images per class.")],
    eps: Annotated[
        float, typer.Option("--eps", help="Pruning threshold ε in [0, 1); 0 = plain MTT.")
    ] = 0.1,
    profile: Annotated[
        str,
        typer.Option(
            "--profile",
            help="paper: SPEC settings (GPU hours); quick: a small budget that finishes in "
            "minutes on a CPU for MNIST-sized data at IPC 1.",
        ),
    ] = "paper",
    arch: Annotated[
        str, typer.Option("--arch", help=f"Architecture of every stage: {ARCHITECTURES}.")
    ] = "convnet",
    experts: Annotated[
        int | None, typer.Option("--experts", help="Buffer: experts (quick 1, paper 100).")
    ] = None,
    buffer_epochs: Annotated[
        int | None,
        typer.Option(
            "--buffer-epochs", help="Buffer: epochs per expert (quick: as needed, paper 50)."
        ),
    ] = None,
    train_subset: Annotated[
        int | None,
        typer.Option(
            "--train-subset", help="Buffer and distill: stratified training subset (quick 5000)."
        ),
    ] = None,
    zca: Annotated[
        bool | None, typer.Option("--zca/--no-zca", help="ZCA-whiten the data (default: preset).")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Resize folder datasets to this size (every stage)."),
    ] = None,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Distill: iterations (quick 60, paper 5000).")
    ] = None,
    syn_steps: Annotated[
        int | None, typer.Option("--syn-steps", help="Distill: student steps N (preset).")
    ] = None,
    expert_epochs: Annotated[
        int | None, typer.Option("--expert-epochs", help="Distill: expert epochs M (preset).")
    ] = None,
    max_start_epoch: Annotated[
        int | None, typer.Option("--max-start-epoch", help="Distill: T⁺ (preset; quick ≤ 3).")
    ] = None,
    batch_syn: Annotated[
        int | None,
        typer.Option("--batch-syn", help="Distill: synthetic minibatch; 0 = all (preset)."),
    ] = None,
    lr_img: Annotated[
        float | None,
        typer.Option(
            "--lr-img", help="Distill: lr of the images (preset; quick ≥ 1000 unless ZCA)."
        ),
    ] = None,
    lr_lr: Annotated[
        float | None, typer.Option("--lr-lr", help="Distill: lr of the step size (preset).")
    ] = None,
    auto_lr: Annotated[
        bool,
        typer.Option(
            "--auto-lr",
            help="Distill: derive --lr-teacher/--lr-lr on CIFAR and Tiny ImageNet too (always "
            "done for sets without a paper row).",
        ),
    ] = False,
    lr_teacher: Annotated[
        float | None, typer.Option("--lr-teacher", help="Distill: initial step size α (preset).")
    ] = None,
    init: Annotated[
        str | None, typer.Option("--init", help="Distill: initial images, real or noise.")
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option("--eval-every", help="Distill: validate every N iterations; 0 = never."),
    ] = None,
    eval_runs: Annotated[
        int | None, typer.Option("--eval-runs", help="Distill: networks per validation.")
    ] = None,
    eval_epochs: Annotated[
        int | None, typer.Option("--eval-epochs", help="Distill: epochs per validation network.")
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option("--checkpoint-every", help="Distill: checkpoint every N iterations."),
    ] = None,
    val_size: Annotated[
        int | None, typer.Option("--val-size", help="Distill: validation images held out.")
    ] = None,
    runs: Annotated[
        int | None,
        typer.Option("--runs", help="Evaluate: networks per set and baseline (quick 3, paper 5)."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="Evaluate: epochs per network (quick 300, paper 1000)."),
    ] = None,
    test_subset: Annotated[
        int | None,
        typer.Option("--test-subset", help="Evaluate: stratified test subset (quick 2000)."),
    ] = None,
    buffer_dir: Annotated[
        Path | None,
        typer.Option("--buffer", help="Use (or train) this buffer folder instead of finding one."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run folder (default: the ddpp data folder's 'runs'); resumed if it holds a "
            "checkpoint.",
        ),
    ] = None,
    parallel: ParallelOption = 1,
    data_dir: DataDirOption = None,
    download: DownloadOption = True,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress or tables; print only the run folder."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Everything in one go: buffer → distill → evaluate (vs random real images) → visualize.

    Reuses a fitting buffer; rerunning with the same --out continues an interrupted run.
    """
    overrides = {
        "experts": experts, "buffer_epochs": buffer_epochs, "train_subset": train_subset,
        "zca": zca, "image_size": image_size, "iterations": iterations, "syn_steps": syn_steps,
        "expert_epochs": expert_epochs, "max_start_epoch": max_start_epoch,
        "batch_syn": batch_syn, "lr_img": lr_img, "lr_lr": lr_lr, "lr_teacher": lr_teacher,
        "init": init, "eval_every": eval_every, "eval_runs": eval_runs,
        "eval_epochs": eval_epochs, "checkpoint_every": checkpoint_every, "val_size": val_size,
        "runs": runs, "epochs": epochs, "test_subset": test_subset,
    }  # fmt: skip
    plan = pipeline.plan_run(
        dataset, ipc, eps=eps, profile=profile.strip().lower(), arch=arch, seed=seed,
        auto_lr=auto_lr, **overrides,
    )  # fmt: skip
    torch_device = resolve_device(device)
    folder = out_dir or pipeline.default_run_folder(plan)
    origin = {**{name: "preset" for name in distill_engine.presets.KEYS}, **plan.origin}
    progress = make_progress(err, disable=quiet or json_out)
    display = _RunDisplay(progress, origin, quiet or json_out, str(torch_device))
    resume_hint = (
        f"finished stages and checkpoints are kept; rerun with --out {folder} to continue."
    )
    with _distilling(progress, resume_hint):
        summary = pipeline.run_pipeline(
            plan, folder, buffer=buffer_dir, data_root=data_dir, download=download,
            device=torch_device, parallel=parallel, on_event=display,
        )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(summary.to_json()))
        return
    if quiet:
        out.print(str(summary.folder), highlight=False, soft_wrap=True)
        return
    out.print(_run_summary_table(summary))
    for line in _run_protocol_lines(summary):
        out.print(line, highlight=False, soft_wrap=True)
    if summary.gain <= 0:
        out.print(
            "[yellow]the distilled set is not ahead of random real images[/]: the budget is "
            "too small for this dataset/IPC; raise --iterations (and --experts, --buffer-epochs).",
            highlight=False,
        )
    for label, path in (
        ("data", summary.data_folder),
        ("buffer", summary.buffer),
        ("run", summary.folder),
        ("set", summary.set_path),
        ("grid", summary.grid),
        ("curves", summary.curves),
        ("summary", summary.summary),
    ):
        out.print(f"{label + ':':<9}{path}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
