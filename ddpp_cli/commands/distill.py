"""``ddpp distill``: trajectory matching with parameter pruning, from a buffer into a run folder;
or, with ``--method``, DC, DSA, DM or CAFE from the real images (docs/methods.md)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from ddpp_cli.commands import _method_options as mopt
from ddpp_cli.commands import _options as opt
from ddpp_cli.commands import _settings
from ddpp_cli.commands._display import distilling, err, joined_world, line, note, out
from ddpp_cli.commands._distilling import DistillDisplay, summary_table
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import faults, layout
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice
from ddpp_cli.progress import make_progress

CONFIG_FIELDS = tuple(f.name for f in fields(distill_engine.DistillConfig))
# Options that are not settings of the run: where things are and where it runs.
ENGINE_OPTIONS = ("buffer_dir", "data_dir", "download", "device")


def print_paths(summary: distill_engine.DistillSummary) -> None:
    for label in ("distilled", "best", "checkpoint", "metrics", "summary"):
        if (path := getattr(summary, label)) is not None:
            line(out, f"{label + ':':<12}{path}")


SnapshotEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--snapshot-every",
        help=_settings.distill_default(
            "Keep the images every N iterations in RUN/snapshots/ (for 'ddpp visualize "
            "--animate'); 0 = never.",
            "snapshot_every",
        ),
        rich_help_panel=opt.RUN_FOLDER,
    ),
]
TestRunsOpt = Annotated[
    int | None,
    typer.Option(
        "--test-runs",
        help=_settings.distill_default("Networks for the final test; 0 = skip.", "test_runs"),
        rich_help_panel=opt.VALIDATION,
    ),
]
ResumeOpt = Annotated[
    Path | None,
    typer.Option(
        "--resume", help="Continue the run in this folder.", rich_help_panel=opt.RUN_FOLDER
    ),
]
AmpOpt = Annotated[
    str | None,
    typer.Option(
        "--amp",
        help=_settings.distill_default(
            "tm: off, or bf16: autocast the student's forward to bfloat16 (for GPUs; loss, "
            "pruning and updates stay float32).",
            "amp",
        ),
        rich_help_panel=opt.EXECUTION,
    ),
]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help=_settings.distill_default(
            "tm: torch.compile the per-step gradient (falls back with a notice if it cannot "
            "compile).",
            "compile",
        ),
        rich_help_panel=opt.EXECUTION,
    ),
]
ChannelsLastOpt = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last",
        help=_settings.distill_default(
            "tm: channels-last activations (helps on GPUs, slower on CPUs).", "channels_last"
        ),
        rich_help_panel=opt.EXECUTION,
    ),
]


def command(
    ctx: typer.Context,
    dataset: opt.DatasetOpt = None,
    ipc: opt.IpcOpt = None,
    method: opt.MethodOpt = None,
    eps: opt.EpsOpt = None,
    buffer_dir: opt.BufferDirOpt = None,
    arch: opt.ArchOpt = None,
    iterations: opt.IterationsOpt = None,
    syn_steps: opt.SynStepsOpt = None,
    expert_epochs: opt.ExpertEpochsOpt = None,
    max_start_epoch: opt.MaxStartEpochOpt = None,
    batch_syn: opt.BatchSynOpt = None,
    lr_img: opt.LrImgOpt = None,
    lr_lr: opt.LrLrOpt = None,
    lr_teacher: opt.LrTeacherOpt = None,
    auto_lr: opt.AutoLrOpt = False,
    init: opt.InitOpt = None,
    batch_real: mopt.BatchRealOpt = None,
    lr_net: mopt.LrNetOpt = None,
    outer_loop: mopt.OuterLoopOpt = None,
    inner_loop: mopt.InnerLoopOpt = None,
    max_image_steps: mopt.MaxImageStepsOpt = None,
    max_inner_epochs: mopt.MaxInnerEpochsOpt = None,
    ensemble: mopt.EnsembleOpt = None,
    kernel_width: mopt.KernelWidthOpt = None,
    krr_reg: mopt.KrrRegOpt = None,
    learn_labels: mopt.LearnLabelsOpt = None,
    lr_labels: mopt.LrLabelsOpt = None,
    labels: mopt.LabelsOpt = None,
    min_start_epoch: mopt.MinStartEpochOpt = None,
    max_start_from: mopt.MaxStartFromOpt = None,
    expansion_end: mopt.ExpansionEndOpt = None,
    skip_threshold: mopt.SkipThresholdOpt = None,
    zca: opt.ZcaOpt = None,
    image_size: opt.ImageSizeOpt = None,
    channels: opt.ChannelsOpt = None,
    eval_every: opt.EvalEveryOpt = None,
    eval_runs: opt.EvalRunsOpt = None,
    eval_epochs: opt.EvalEpochsOpt = None,
    test_runs: TestRunsOpt = None,
    checkpoint_every: opt.CheckpointEveryOpt = None,
    snapshot_every: SnapshotEveryOpt = None,
    val_size: opt.ValSizeOpt = None,
    selection: opt.SelectionOpt = None,
    train_subset: opt.TrainSubsetOpt = None,
    resume_dir: ResumeOpt = None,
    out_dir: opt.RunFolderOpt = None,
    data_dir: opt.DataDirOpt = None,
    download: opt.DownloadOpt = True,
    device: opt.DeviceOpt = "auto",
    seed: opt.SeedOpt = None,
    unroll: opt.UnrollOpt = None,
    unroll_budget: opt.UnrollBudgetOpt = None,
    amp: AmpOpt = None,
    compile: CompileOpt = None,
    channels_last: ChannelsLastOpt = None,
    quiet: opt.quiet_option("the run folder") = False,
    json_out: opt.JsonOpt = False,
) -> None:
    """Distill a dataset: trajectory matching with parameter pruning from a buffer (--method
    tm), or DC, DSA, DM, CAFE, CAFE+DSA or KIP from the real images.

    Ctrl-C or SIGTERM writes a checkpoint and exits with status 130; a diverged run exits with 1;
    out of memory (3), a full disk (4) or an unwritable folder (5) keep the last complete state
    and say how to continue.
    """
    options = dict(locals())
    check_method_options(options.pop("ctx"), method, options["resume_dir"])
    engine_options = {name: options.pop(name) for name in ENGINE_OPTIONS}
    output = {name: options.pop(name) for name in ("quiet", "json_out")}
    resume_dir, out_dir = options.pop("resume_dir"), options.pop("out_dir")
    derive = options.pop("auto_lr")
    given = _settings.settings(options, CONFIG_FIELDS)
    folder, resolved = resolve_run(given, resume_dir, out_dir, derive=derive)
    distill_and_report(folder, resolved, engine_options, **output)


def check_method_options(ctx: typer.Context, method: str | None, resume_dir: Path | None) -> None:
    """DdppError naming an option typed on the command line (even at its default value) that
    does not apply to the run's method: ``--method``, else the resumed run's, else tm."""
    if method is None and resume_dir is not None:
        method = distill_engine.saved_config(resume_dir).method
    distill_engine.check_options(
        method or distill_engine.DEFAULT_METHOD, _settings.given_options(ctx)
    )


def resolve_run(
    given: dict[str, Any], resume_dir: Path | None, out_dir: Path | None, *, derive: bool = False
) -> tuple[Path, distill_engine.Resolved]:
    """The run folder and its resolved config (:func:`ddpp_cli.engine.distill.resolve`)."""
    if resume_dir is not None and out_dir is not None and resume_dir.resolve() != out_dir.resolve():
        raise DdppError(
            f"--resume {resume_dir} and --out {out_dir} name different folders; drop one."
        )
    folder = resume_dir or out_dir
    resolved = distill_engine.resolve(given, folder, resume=resume_dir is not None, derive=derive)
    return folder or distill_engine.default_run_dir(resolved.config), resolved


def distill_and_report(
    folder: Path, resolved: distill_engine.Resolved, engine_options: dict[str, Any], *, quiet: bool,
    json_out: bool,
) -> None:  # fmt: skip
    """Run the engine (``engine_options``: :data:`ENGINE_OPTIONS`) and print its summary.

    Under torchrun the ranks share the work (docs/parallel.md); rank 0 prints.
    """
    world, torch_device = joined_world(engine_options["device"])
    folder = world.from_main(folder)  # a default folder's timestamp is rank 0's
    main = world.is_main
    progress = make_progress(err, disable=quiet or not main)
    display = DistillDisplay(progress, resolved.origin, quiet or json_out or not main)

    def on_event(event: object) -> None:
        if isinstance(event, Notice) and main:
            note(err, event.message)
        display(event)

    resume = f"ddpp distill --resume {folder}"
    resume_hint = f"checkpoint saved in {folder}; continue with '{resume}'."

    def continuation(failed: faults.StageFailed) -> str:
        lighter = distill_engine.lighter_unroll(resolved.config) if failed.out_of_memory else ""
        return f"continue with '{resume}{lighter}'"

    with (
        layout.writing(folder, enabled=main),
        distilling(progress, resume_hint, continuation, speak=main),
    ):
        summary = distill_engine.distill(
            resolved.config, folder, buffer=engine_options["buffer_dir"],
            data_root=engine_options["data_dir"], download=engine_options["download"],
            device=torch_device, on_event=on_event, world=world,
        )  # fmt: skip
    if not main:
        return
    if json_out:
        typer.echo(json.dumps(distill_engine.summary_json(summary)))
    elif quiet:
        line(out, str(summary.folder))
    else:
        out.print(summary_table(summary))
        print_paths(summary)
