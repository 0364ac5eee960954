"""``ddpp run``: buffer → distill → evaluate (vs random real images) → visualize in one go."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ddpp_cli.commands import _comparing, _scores, _settings
from ddpp_cli.commands import _method_options as mopt
from ddpp_cli.commands import _options as opt
from ddpp_cli.commands._display import distilling, err, joined_world, line, out
from ddpp_cli.commands._displays import RunDisplay
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import evaluate, faults, layout, pipeline
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.progress import make_progress, percent

# Settings of plan_run: its keyword arguments and its overrides.
SETTINGS = ("eps", "profile", "arch", "seed", "auto_lr", *pipeline.OVERRIDE_KEYS)
# Options that are not settings of the run: where things are and where it runs.
ENGINE_OPTIONS = ("buffer_dir", "out_dir", "data_dir", "download", "device", "parallel")


def summary_table(summary: pipeline.RunSummary) -> Table:
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
    if result.selection != evaluate.SELECTION_RULE:
        source += f", {result.selection}"
    if result.protocol["label_text"] != evaluate.HARD_LABELS_TEXT:
        source += f", {result.protocol['label_text']}"
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


def protocol_lines(summary: pipeline.RunSummary) -> list[str]:
    result, baseline = summary.evaluation, summary.baseline
    p = result.protocol
    times = ", ".join(f"{stage} {secs:.0f} s" for stage, secs in summary.seconds.items())
    return [
        f"protocol: {p['arch']}, {p['epochs']} epochs, lr {result.lr:.4g} (learned) / "
        f"{baseline.lr:g} (baseline), DSA {'off' if p['dsa_strategy'] == 'none' else 'on'}, "
        f"same seeds; tested on the same {p['test_size']} images; ± is the population std",
        f"time: {sum(summary.seconds.values()) / 60:.1f} min ({times})",
    ]


def print_summary(summary: pipeline.RunSummary) -> None:
    out.print(summary_table(summary))
    for text in protocol_lines(summary):
        line(out, text)
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
        line(out, f"{label + ':':<9}{path}")


QUICK = pipeline.QUICK
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        help="paper: the paper's settings (GPU hours); quick: a small budget that finishes in "
        f"minutes on a CPU for MNIST-sized data at IPC 1 ({QUICK['experts']} expert on "
        f"{QUICK['buffer_train_subset']} images, {QUICK['iterations']} iterations of at most "
        f"{QUICK['syn_steps']} steps from start epochs < {QUICK['max_start_epoch']}, lr-img ≥ "
        f"{QUICK['lr_img']:g} unless ZCA, no validation, {QUICK['runs']} networks × "
        f"{QUICK['epochs']} epochs tested on {QUICK['test_subset']} images). Options override "
        "either.",
        rich_help_panel=opt.DISTILL,
    ),
]
BufferEpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--buffer-epochs",
        help="Epochs per expert (quick: as needed, paper "
        f"{_settings.field_default(buffer_engine.BufferConfig, 'epochs')}).",
        rich_help_panel=opt.BUFFER,
    ),
]


def refuse_labels_with_compare(given: dict[str, Any], compare: str | None) -> None:
    """One line for ``--labels``/``--lr-labels`` with ``--compare``: its rows name their labels."""
    flags = [f"--{name.replace('_', '-')}" for name in ("labels", "lr_labels") if name in given]
    if compare is not None and flags:
        raise DdppError(
            f"{' and '.join(flags)} set one run's labels; with --compare, add the rows "
            "ddpp-teacher or ddpp-learned instead (e.g. --compare ddpp,ddpp-learned)."
        )


def _quick_and_paper(name: str) -> str:
    """ "quick 3, paper 5": the profiles' values of an evaluation setting."""
    return f"quick {QUICK[name]}, paper {_settings.field_default(evaluate.EvalConfig, name)}"


RunsOpt = Annotated[
    int | None,
    typer.Option(
        "--runs",
        help=f"Networks per set and baseline ({_quick_and_paper('runs')}).",
        rich_help_panel=opt.EVALUATION,
    ),
]
EpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--epochs",
        help=f"Epochs per network ({_quick_and_paper('epochs')}).",
        rich_help_panel=opt.EVALUATION,
    ),
]


def command(
    dataset: opt.DatasetOpt,
    ipc: opt.IpcOpt,
    eps: opt.EpsOpt = None,
    profile: ProfileOpt = "paper",
    arch: opt.ArchOpt = None,
    experts: opt.ExpertsOpt = None,
    buffer_epochs: BufferEpochsOpt = None,
    train_subset: opt.TrainSubsetOpt = None,
    zca: opt.ZcaOpt = None,
    image_size: opt.ImageSizeOpt = None,
    channels: opt.ChannelsOpt = None,
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
    eval_every: opt.EvalEveryOpt = None,
    eval_runs: opt.EvalRunsOpt = None,
    eval_epochs: opt.EvalEpochsOpt = None,
    checkpoint_every: opt.CheckpointEveryOpt = None,
    val_size: opt.ValSizeOpt = None,
    selection: opt.SelectionOpt = None,
    labels: mopt.LabelsOpt = None,
    lr_labels: mopt.LrLabelsOpt = None,
    runs: RunsOpt = None,
    epochs: EpochsOpt = None,
    test_subset: opt.TestSubsetOpt = None,
    buffer_dir: opt.BufferDirOpt = None,
    out_dir: opt.RunFolderOpt = None,
    parallel: opt.ParallelOpt = 1,
    unroll: opt.UnrollOpt = None,
    unroll_budget: opt.UnrollBudgetOpt = None,
    data_dir: opt.DataDirOpt = None,
    download: opt.DownloadOpt = True,
    device: opt.DeviceOpt = "auto",
    seed: opt.SeedOpt = 0,
    compare: _comparing.CompareOpt = None,
    compare_budget: _comparing.CompareBudgetOpt = None,
    scores: _scores.ScoresOpt = False,
    score_weight: _scores.ScoreWeightOpt = None,
    scores_convention: _scores.ConventionOpt = None,
    quiet: opt.quiet_option("the run folder") = False,
    json_out: opt.JsonOpt = False,
) -> None:
    """Everything in one go: buffer → distill → evaluate (vs random real images) → visualize.

    Reuses a fitting buffer; rerunning with the same --out continues an interrupted run.
    With --compare, the paper's Table I instead (docs/compare.md).
    """
    options = dict(locals())
    dataset, ipc = options.pop("dataset"), options.pop("ipc")
    engine_options = {name: options.pop(name) for name in ENGINE_OPTIONS}
    output = {name: options.pop(name) for name in ("quiet", "json_out")}
    rows, budgets = options.pop("compare"), options.pop("compare_budget")
    output["scores"] = _scores.pop_request(options)
    given = _settings.settings(options, SETTINGS)
    given["profile"] = given["profile"].strip().lower()
    _comparing.refuse_with_compare(given, budgets, rows)
    refuse_labels_with_compare(given, rows)
    plan = pipeline.plan_run(dataset, ipc, **given)
    if rows is not None:
        _comparing.compare_and_report(plan, rows, budgets, engine_options, **output)
    else:
        run_and_report(plan, engine_options, **output)


def run_and_report(
    plan: pipeline.RunPlan, engine_options: dict[str, Any], *, quiet: bool, json_out: bool,
    scores: Any = None,
) -> None:  # fmt: skip
    """Run the pipeline with one progress display, then print the summary (or JSON, or folder).

    ``engine_options`` are those of :data:`ENGINE_OPTIONS` as given. Under torchrun the ranks
    share every stage (docs/parallel.md); rank 0 prints.
    """
    world, torch_device = joined_world(engine_options["device"])
    folder = world.from_main(engine_options["out_dir"] or pipeline.default_run_folder(plan))
    silent = quiet or json_out or not world.is_main
    progress = make_progress(err, disable=silent)
    display = RunDisplay(progress, plan, silent, str(torch_device))
    resume_hint = (
        f"finished stages and checkpoints are kept; rerun with --out {folder} to continue."
    )

    def continuation(failed: faults.StageFailed) -> str:
        distilling = failed.out_of_memory and failed.stage == "distill"
        more = distill_engine.lighter_unroll(plan.distill) if distilling else ""
        return f"continue by running the same command again with --out {folder}{more}"

    with (
        layout.writing(folder, enabled=world.is_main),
        distilling(progress, resume_hint, continuation, speak=world.is_main),
    ):
        summary = pipeline.run_pipeline(
            plan, folder, buffer=engine_options["buffer_dir"],
            data_root=engine_options["data_dir"], download=engine_options["download"],
            device=torch_device, parallel=engine_options["parallel"], on_event=display,
            world=world,
        )  # fmt: skip
    if not world.is_main:
        return
    found = _scores.run_scores(summary, scores, engine_options, torch_device, display, world)
    if found:  # run.json holds the scores too, as 'ddpp evaluate --scores --json' gives them
        pipeline.write_summary(summary, found)
    if json_out:
        typer.echo(json.dumps(summary.to_json() | found))
    elif quiet:
        line(out, str(summary.folder))
    else:
        print_summary(summary)
        _scores.print_scores(found.get("scores"))
