"""Options shared by several commands, each declared once as an ``Annotated`` alias.

A command uses the alias with its own default (``None`` where "not given" must stay visible, so
that presets, a resumed run's settings or a profile can fill the value). :func:`settings` maps
the options a command was given to config fields by name, so no setting is spelled twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from ddpp_cli.engine import data, models
from ddpp_cli.engine.device import DEVICE_CHOICES
from ddpp_cli.engine.distill import methods as distill_methods

ARCHITECTURES = ", ".join(models.available())

# Help panels: long option lists grouped by stage (as timm's train.py groups its arguments).
DATA = "Data"
BUFFER = "Buffer (expert trajectories)"
DISTILL = "Distillation"
VALIDATION = "Validation and test"
RUN_FOLDER = "Run folder"
EXECUTION = "Execution"
EVALUATION = "Evaluation"
BASELINE = "Baseline (instead of a set)"
METHODS = "Methods dc, dsa, dm, cafe"


def settings(options: dict[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The options given (not None), by field name; TypeError for a name not in ``known``.

    Commands name their parameters after the config fields they set, so one call maps every
    setting (nanoGPT's configurator rejects unknown keys the same way).
    """
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    return {name: value for name, value in options.items() if value is not None}


def given_options(ctx: typer.Context) -> dict[str, object]:
    """The options the user set on the command line (not left at their defaults), by name:
    Typer's parameter source, so that a default typed out is "given" too."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {
        name: value
        for name, value in ctx.params.items()
        if sources[name] is not None and sources[name].name in ("COMMANDLINE", "ENVIRONMENT")
    }


# ------------------------------------------------------------------------------------- data
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset", "-d", help=f"Dataset: {', '.join(data.available())}.", rich_help_panel=DATA
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding the dataset (default: the ddpp data folder's 'datasets').",
        rich_help_panel=DATA,
    ),
]
DownloadOpt = Annotated[
    bool,
    typer.Option(
        "--download/--no-download",
        help="Download torchvision datasets when missing.",
        rich_help_panel=DATA,
    ),
]
ZcaOpt = Annotated[
    bool | None,
    typer.Option(
        "--zca/--no-zca",
        help="ZCA-whiten the data (default: the preset's, on for CIFAR; with --buffer, as the "
        "buffer was made).",
        rich_help_panel=DATA,
    ),
]
TrainSubsetOpt = Annotated[
    int | None,
    typer.Option(
        "--train-subset",
        help="Train on a stratified, seeded subset of N images (distill: default the buffer's).",
        rich_help_panel=DATA,
    ),
]
TestSubsetOpt = Annotated[
    int | None,
    typer.Option(
        "--test-subset",
        help="Test on a stratified, seeded subset of N images.",
        rich_help_panel=DATA,
    ),
]
ImageSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        help="Resize the images to this size (distill: dc/dsa/dm/cafe only; tm takes its "
        "buffer's).",
        rich_help_panel=DATA,
    ),
]

# ----------------------------------------------------------------------------------- buffer
ExpertsOpt = Annotated[
    int | None,
    typer.Option("--experts", help="Number of expert trajectories.", rich_help_panel=BUFFER),
]
BufferDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--buffer",
        help="Buffer folder (default: the ddpp data folder's buffer for --dataset/--arch/ZCA; "
        "'ddpp run' trains one when none fits).",
        rich_help_panel=BUFFER,
    ),
]

# ------------------------------------------------------------------------------ distillation
IpcOpt = Annotated[
    int | None,
    typer.Option("--ipc", help="Synthetic images per class.", rich_help_panel=DISTILL),
]
EpsOpt = Annotated[
    float | None,
    typer.Option(
        "--eps",
        help="tm: pruning threshold ε in [0, 1); 0 = plain MTT. (default: 0.1)",
        rich_help_panel=DISTILL,
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help=f"Architecture of the experts and the student: {ARCHITECTURES}. (default: convnet)",
        rich_help_panel=DISTILL,
    ),
]
IterationsOpt = Annotated[
    int | None,
    typer.Option(
        "--iterations",
        help=distill_methods.iterations_help(),
        rich_help_panel=DISTILL,
    ),
]
SynStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--syn-steps", help="tm: student steps N per iteration (preset).", rich_help_panel=DISTILL
    ),
]
ExpertEpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--expert-epochs", help="tm: expert epochs M to match (preset).", rich_help_panel=DISTILL
    ),
]
MaxStartEpochOpt = Annotated[
    int | None,
    typer.Option(
        "--max-start-epoch",
        help="tm: start epochs drawn from 0…T⁺−1 (preset).",
        rich_help_panel=DISTILL,
    ),
]
BatchSynOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-syn",
        help="tm: synthetic minibatch per step; 0 = all (preset).",
        rich_help_panel=DISTILL,
    ),
]
LrImgOpt = Annotated[
    float | None,
    typer.Option(
        "--lr-img",
        help="SGD lr of the images (the method's preset; cafe halves it at 1200, 1600, 1800).",
        rich_help_panel=DISTILL,
    ),
]
LrLrOpt = Annotated[
    float | None,
    typer.Option(
        "--lr-lr",
        help="tm: SGD lr of the learned step size (preset; derived from the first gradient for "
        "sets without a paper row).",
        rich_help_panel=DISTILL,
    ),
]
LrTeacherOpt = Annotated[
    float | None,
    typer.Option(
        "--lr-teacher",
        help="tm: initial learned step size α (preset; derived from the buffer for sets without a "
        "paper row).",
        rich_help_panel=DISTILL,
    ),
]
AutoLrOpt = Annotated[
    bool,
    typer.Option(
        "--auto-lr",
        help="tm: derive --lr-teacher and --lr-lr on CIFAR and Tiny ImageNet too (always done for "
        "sets without a paper row; docs/distill.md).",
        rich_help_panel=DISTILL,
    ),
]
InitOpt = Annotated[
    str | None,
    typer.Option(
        "--init",
        help="Initial images: real or noise. (default: the method's: noise for dc and cafe, "
        "else real)",
        rich_help_panel=DISTILL,
    ),
]

# ----------------------------------------------------------- the other distillation methods
MethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        help=distill_methods.method_help(),
        rich_help_panel=DISTILL,
    ),
]
BatchRealOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-real",
        help="dc/dsa/dm/cafe: real images drawn per class for each matching step. (default: 256)",
        rich_help_panel=METHODS,
    ),
]
LrNetOpt = Annotated[
    float | None,
    typer.Option(
        "--lr-net",
        help="dc/dsa/cafe: SGD lr of the network trained on the synthetic set between image "
        "steps. (default: 0.01)",
        rich_help_panel=METHODS,
    ),
]
OuterLoopOpt = Annotated[
    int | None,
    typer.Option(
        "--outer-loop",
        help="dc/dsa: image steps per iteration (default: the reference's get_loops of the IPC).",
        rich_help_panel=METHODS,
    ),
]
InnerLoopOpt = Annotated[
    int | None,
    typer.Option(
        "--inner-loop",
        help="dc/dsa: network epochs on the synthetic set between image steps (default: the "
        "reference's get_loops of the IPC).",
        rich_help_panel=METHODS,
    ),
]
MaxImageStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-image-steps",
        help="cafe: at most N image steps per iteration (the reference has no bound). "
        "(default: 100)",
        rich_help_panel=METHODS,
    ),
]
MaxInnerEpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-inner-epochs",
        help="cafe: at most N network epochs per inner phase (the reference has no bound). "
        "(default: 100)",
        rich_help_panel=METHODS,
    ),
]

# ----------------------------------------------------------------------- validation and test
EvalEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-every",
        help="Validate every N iterations; 0 = never. (default: 500)",
        rich_help_panel=VALIDATION,
    ),
]
EvalRunsOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-runs", help="Networks per validation. (default: 3)", rich_help_panel=VALIDATION
    ),
]
EvalEpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-epochs",
        help="Epochs per validation network (distill: also per test network). (default: 1000)",
        rich_help_panel=VALIDATION,
    ),
]
ValSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--val-size",
        help="Validation images held out of the training split (default: 10 %, at most 5000).",
        rich_help_panel=VALIDATION,
    ),
]

# -------------------------------------------------------------------------------- run folder
CheckpointEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        help="Checkpoint every N iterations. (default: 100)",
        rich_help_panel=RUN_FOLDER,
    ),
]
RunFolderOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Run folder (default: the ddpp data folder's 'runs'); resumed if it holds a "
        "checkpoint.",
        rich_help_panel=RUN_FOLDER,
    ),
]

# --------------------------------------------------------------------------------- execution
DeviceOpt = Annotated[
    str, typer.Option("--device", help=f"Device: {DEVICE_CHOICES}.", rich_help_panel=EXECUTION)
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Seed for every random draw.", rich_help_panel=EXECUTION),
]
UnrollOpt = Annotated[
    str | None,
    typer.Option(
        "--unroll",
        help="tm: graph keeps the unrolled graph (fastest; memory grows with --syn-steps); "
        "memory: recomputes one step at a time in reverse (bounded memory, same gradients) "
        "except the last steps that fit --unroll-budget. (default: graph)",
        rich_help_panel=EXECUTION,
    ),
]
UnrollBudgetOpt = Annotated[
    int | None,
    typer.Option(
        "--unroll-budget",
        metavar="MIB",
        help="tm, with --unroll memory: keep the graphs of as many of the last steps as fit in MIB "
        "MiB instead of recomputing them (faster; 0 recomputes every step). (default: 2048)",
        rich_help_panel=EXECUTION,
    ),
]
ParallelOpt = Annotated[
    int,
    typer.Option(
        "--parallel",
        help="Train K networks at once as one batched (vmapped) model, each with its own seed "
        "and data order (faster on GPUs; on CPUs one at a time is as fast).",
        rich_help_panel=EXECUTION,
    ),
]

# ------------------------------------------------------------------------------------ output
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else there.")
]


def quiet_option(prints: str) -> Any:
    """``--quiet``/``-q``; its help says what the command still prints (``prints``)."""
    return Annotated[
        bool, typer.Option("--quiet", "-q", help=f"No progress or tables; print only {prints}.")
    ]
