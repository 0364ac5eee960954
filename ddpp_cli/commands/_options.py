"""Options shared by several commands, each declared once as an ``Annotated`` alias, by help panel.

A command uses the alias with its own default (``None`` where "not given" must stay visible, so
that presets, a resumed run's settings or a profile can fill the value). :mod:`._settings` maps
the options given to config fields, and gives help texts their defaults from those fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ddpp_cli.commands._settings import distill_default, init_default
from ddpp_cli.engine import data, layout, models
from ddpp_cli.engine.device import DEVICE_CHOICES
from ddpp_cli.engine.distill import MAX_VAL_SIZE, SELECTION_HELP
from ddpp_cli.engine.distill import methods as distill_methods

ARCHITECTURES = (
    f"{', '.join(models.available())}, or any {models.CONVNET_FAMILY} (e.g. convnet-w1024)"
)

# Help panels: long option lists grouped by stage (as timm's train.py groups its arguments).
DATA = "Data"
BUFFER = "Buffer (expert trajectories)"
DISTILL = "Distillation"
VALIDATION = "Validation and test"
RUN_FOLDER = "Run folder"
EXECUTION = "Execution"
EVALUATION = "Evaluation"
BASELINE = "Baseline (instead of a set)"


def option(kind: Any, panel: str | None, *flags: str, help: str, **kwargs: Any) -> Any:
    """The alias ``Annotated[kind, typer.Option(*flags)]``, shown in help panel ``panel``."""
    return Annotated[kind, typer.Option(*flags, help=help, rich_help_panel=panel, **kwargs)]


# ------------------------------------------------------------------------------------- data
DatasetOpt = option(
    str | None, DATA, "--dataset", "-d", help=f"Dataset: {', '.join(data.available())}."
)
DataDirOpt = option(
    Path | None,
    DATA,
    "--data-dir",
    help="Folder holding the dataset (default: the ddpp data folder's "
    f"'{layout.DATASETS_DIRNAME}').",
)
DownloadOpt = option(
    bool, DATA, "--download/--no-download", help="Download torchvision datasets when missing."
)
ZcaOpt = option(
    bool | None,
    DATA,
    "--zca/--no-zca",
    help="ZCA-whiten the data (default: the preset's, on for CIFAR; with --buffer, as the "
    "buffer was made).",
)
TrainSubsetOpt = option(
    int | None,
    DATA,
    "--train-subset",
    help="Train on a stratified, seeded subset of N images (distill: default the buffer's).",
)
TestSubsetOpt = option(
    int | None, DATA, "--test-subset", help="Test on a stratified, seeded subset of N images."
)
ImageSizeOpt = option(
    int | None,
    DATA,
    "--image-size",
    help="Resize the images to this size (distill: all methods but tm, which takes its buffer's).",
)
ChannelsOpt = option(int | None, DATA, "--channels", help="Load an image folder as 1 channel "
    "(gray; colour images converted with PIL's L) or 3 (default: 1 when every image is gray, "
    "else 3; distill: dc/dsa/dm/cafe/cafe-dsa only).")  # fmt: skip

# ----------------------------------------------------------------------------------- buffer
ExpertsOpt = option(int | None, BUFFER, "--experts", help="Number of expert trajectories.")
BufferDirOpt = option(
    Path | None,
    BUFFER,
    "--buffer",
    help="Buffer folder (default: the ddpp data folder's buffer for --dataset/--arch/ZCA; "
    "'ddpp run' trains one when none fits).",
)

# ------------------------------------------------------------------------------ distillation
IpcOpt = option(int | None, DISTILL, "--ipc", help="Synthetic images per class.")
EpsOpt = option(
    float | None,
    DISTILL,
    "--eps",
    help="tm: pruning threshold ε in [0, 1); 0 = plain MTT. (default: 0.1)",
)
ArchOpt = option(
    str | None,
    DISTILL,
    "--arch",
    help=distill_default(f"Architecture of the experts and the student: {ARCHITECTURES}.", "arch"),
)
IterationsOpt = option(
    int | None,
    DISTILL,
    "--iterations",
    help=distill_methods.iterations_help(),
)
SynStepsOpt = option(
    int | None, DISTILL, "--syn-steps", help="tm: student steps N per iteration (preset)."
)
ExpertEpochsOpt = option(
    int | None, DISTILL, "--expert-epochs", help="tm: expert epochs M to match (preset)."
)
MaxStartEpochOpt = option(
    int | None, DISTILL, "--max-start-epoch", help="tm: start epochs drawn from 0…T⁺−1 (preset)."
)
BatchSynOpt = option(
    int | None, DISTILL, "--batch-syn", help="tm: synthetic minibatch per step; 0 = all (preset)."
)
LrImgOpt = option(
    float | None,
    DISTILL,
    "--lr-img",
    help="SGD lr of the images (the method's preset; cafe/cafe-dsa halve it at 1200, 1600, 1800).",
)
LrLrOpt = option(
    float | None,
    DISTILL,
    "--lr-lr",
    help="tm: SGD lr of the learned step size (preset; derived from the first gradient for "
    "sets without a paper row).",
)
LrTeacherOpt = option(
    float | None,
    DISTILL,
    "--lr-teacher",
    help="tm: initial learned step size α (preset; derived from the buffer for sets without a "
    "paper row).",
)
AutoLrOpt = option(
    bool,
    DISTILL,
    "--auto-lr",
    help="tm: derive --lr-teacher and --lr-lr on CIFAR and Tiny ImageNet too (always done for "
    "sets without a paper row; docs/distill.md).",
)
InitOpt = option(
    str | None,
    DISTILL,
    "--init",
    help=f"Initial images: real or noise. (default: the method's: {init_default()})",
)

# ----------------------------------------------------------- the other distillation methods
MethodOpt = option(
    str | None,
    DISTILL,
    "--method",
    help=distill_methods.method_help(),
)
# ----------------------------------------------------------------------- validation and test
EvalEveryOpt = option(
    int | None,
    VALIDATION,
    "--eval-every",
    help=distill_default("Validate every N iterations; 0 = never.", "eval_every"),
)
EvalRunsOpt = option(
    int | None,
    VALIDATION,
    "--eval-runs",
    help=distill_default("Networks per validation.", "eval_runs"),
)
EvalEpochsOpt = option(
    int | None,
    VALIDATION,
    "--eval-epochs",
    help=distill_default(
        "Epochs per validation network (distill: also per test network).", "eval_epochs"
    ),
)
ValSizeOpt = option(
    int | None,
    VALIDATION,
    "--val-size",
    help="Validation images held out of the training split (default: 10 %, at most "
    f"{MAX_VAL_SIZE}).",
)
SelectionOpt = option(str | None, VALIDATION, "--selection", help=SELECTION_HELP)

# -------------------------------------------------------------------------------- run folder
CheckpointEveryOpt = option(
    int | None,
    RUN_FOLDER,
    "--checkpoint-every",
    help=distill_default("Checkpoint every N iterations.", "checkpoint_every"),
)
RunFolderOpt = option(
    Path | None,
    RUN_FOLDER,
    "--out",
    help=f"Run folder (default: the ddpp data folder's '{layout.RUNS_DIRNAME}'); resumed if it "
    "holds a checkpoint.",
)

# --------------------------------------------------------------------------------- execution
DeviceOpt = option(str, EXECUTION, "--device", help=f"Device: {DEVICE_CHOICES}.")
SeedOpt = option(int | None, EXECUTION, "--seed", help="Seed for every random draw.")
UnrollOpt = option(
    str | None,
    EXECUTION,
    "--unroll",
    help=distill_default(
        "tm: graph keeps the unrolled graph (fastest; memory grows with --syn-steps); "
        "memory: recomputes one step at a time in reverse (bounded memory, same gradients) "
        "except the last steps that fit --unroll-budget.",
        "unroll",
    ),
)
UnrollBudgetOpt = option(
    int | None,
    EXECUTION,
    "--unroll-budget",
    metavar="MIB",
    help=distill_default(
        "tm, with --unroll memory: keep the graphs of as many of the last steps as fit in "
        "MIB MiB instead of recomputing them (faster; 0 recomputes every step).",
        "unroll_budget",
    ),
)
ParallelOpt = option(
    int,
    EXECUTION,
    "--parallel",
    help="Train K networks at once as one batched (vmapped) model, each with its own seed "
    "and data order (faster on GPUs; on CPUs one at a time is as fast).",
)

# ------------------------------------------------------------------------------------ output
JsonOpt = option(
    bool, None, "--json", help="Print one JSON object on stdout and nothing else there."
)


def quiet_option(prints: str) -> Any:
    """``--quiet``/``-q``; its help says what the command still prints (``prints``)."""
    return option(bool, None, "--quiet", "-q", help=f"No progress or tables; print only {prints}.")
