"""The options of ``ddpp evaluate`` that choose what it trains on instead of a set: a baseline
coreset (``--baseline``) or another tool's set (``--import``), which of them apply to which, and
the baseline's config (each coreset's own options read from the coreset registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddpp_cli.commands import _options as opt
from ddpp_cli.commands._evaluate_full import FULL_HELP
from ddpp_cli.commands._settings import settings
from ddpp_cli.engine import baselines, coresets, data, foreign_tools
from ddpp_cli.engine.errors import DdppError

# Options named after the BaselineConfig field they set (``_settings.settings`` maps them).
BASELINE_SETTINGS = ("dataset", "ipc", "train_subset", "seed", "buffer", "forgetting_epochs",
                     "forgetting_unlearned", "feature_epochs", "l2_normalize",
                     "image_size", "channels")  # fmt: skip
# What to evaluate comes from a set (the argument), --baseline or --import; these options apply
# to the last two only (parameter name -> the ways it applies to).
CHOICE_OPTIONS = {
    "dataset": ("--baseline", "--import"),
    "ipc": ("--baseline",),
    "train_subset": ("--baseline", "set"),  # a set: the pool of its --scores
    "image_size": ("--baseline", "--import"),
    "channels": ("--baseline",),
    "buffer": ("--baseline",),
    "forgetting_epochs": ("--baseline",),
    "forgetting_unlearned": ("--baseline",),
    "feature_epochs": ("--baseline",),
    "l2_normalize": ("--baseline",),
    "import_kind": ("--import",),
    "experiment": ("--import",),
    "save": ("--baseline", "--import"),
    "no_zca": ("--baseline", "--import"),
    "force": ("--baseline", "--import"),
    "scores": ("set",),
    "score_weight": ("set",),
    "scores_convention": ("set",),
}


ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", help="Network to train (default: the set's, else convnet)."),
]

ChoiceImageSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        help="Baseline or import: the dataset's images at this size (for an image folder, or a "
        "set made at another size than the dataset's own; a baseline's --buffer tells its own).",
        rich_help_panel=opt.BASELINE,
    ),
]

ChoiceChannelsOpt = Annotated[
    int | None,
    typer.Option(
        "--channels",
        help="Baseline: load an image folder as 1 channel (gray; colour converted with PIL's L) "
        "or 3 (default: 1 when every image is gray, else 3; a --buffer tells its own).",
        rich_help_panel=opt.BASELINE,
    ),
]


def _coreset_choices() -> str:
    """``--baseline``'s choices in words, from the coreset registry: "a, b, or c"."""
    named = [coresets.get_coreset(name).help for name in coresets.list_coresets(settings=False)]
    return ", ".join(named[:-1]) + ", or " + named[-1] if len(named) > 1 else named[0]


BaselineOpt = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        help=f"Evaluate a coreset of real images instead: {_coreset_choices()}; or {FULL_HELP}.",
        rich_help_panel=opt.BASELINE,
    ),
]

BaselineDatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        "-d",
        help=f"Baseline or import dataset: {', '.join(data.available())}.",
        rich_help_panel=opt.BASELINE,
    ),
]

BaselineIpcOpt = Annotated[
    int | None,
    typer.Option("--ipc", help="Baseline images per class.", rich_help_panel=opt.BASELINE),
]

NoZcaOpt = Annotated[
    bool,
    typer.Option(
        "--no-zca",
        help="Baseline or import: normalise instead of ZCA (the non-CIFAR default).",
        rich_help_panel=opt.BASELINE,
    ),
]

BaselineSubsetOpt = Annotated[
    int | None,
    typer.Option(
        "--train-subset",
        help="Baseline: pick from (and train herding's or forgetting's network on) a "
        "stratified subset of N training images.",
        rich_help_panel=opt.BASELINE,
    ),
]

BaselineBufferOpt = Annotated[
    Path | None,
    typer.Option(
        "--buffer",
        help="Baseline: prepare the data as this 'ddpp buffer' folder's experts saw them "
        "(ZCA or normalisation, image size); herding uses its first expert's last snapshot as "
        "the feature network.",
        rich_help_panel=opt.BASELINE,
    ),
]

ForgettingEpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--forgetting-epochs",
        help="Baseline forgetting: epochs of the network whose forgetting events are counted. "
        f"(default: {coresets.FORGETTING_EPOCHS}, Toneva et al.; see docs/methods.md for a "
        "CPU budget)",
        rich_help_panel=opt.BASELINE,
    ),
]

ForgettingUnlearnedOpt = Annotated[
    str | None,
    typer.Option(
        "--forgetting-unlearned",
        help="Baseline forgetting: how never-learned examples rank: toneva (forgotten at every "
        "epoch, so they are picked first) or deepcore (0: the picks were learned, then "
        "forgotten). (default: toneva)",
        rich_help_panel=opt.BASELINE,
    ),
]
FeatureEpochsOpt = Annotated[
    int | None,
    typer.Option(
        "--feature-epochs",
        help="Baseline herding without --buffer: epochs of the feature network. (default: "
        f"{coresets.HERDING_FEATURE_EPOCHS}, an expert's)",
        rich_help_panel=opt.BASELINE,
    ),
]

L2NormalizeOpt = Annotated[
    bool,
    typer.Option(
        "--l2-normalize",
        help="Baseline herding: scale each feature vector to unit length first (iCaRL).",
        rich_help_panel=opt.BASELINE,
    ),
]

SaveOpt = Annotated[
    Path | None,
    typer.Option(
        "--save",
        help="Baseline or import: also write the set as a ddpp distilled-set file.",
        rich_help_panel=opt.BASELINE,
    ),
]

ForceSaveOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Baseline or import: replace the --save file (and its .zca file) if they exist.",
        rich_help_panel=opt.BASELINE,
    ),
]

IMPORT = "Import (another tool's set)"


def _kind_choices() -> str:
    """``--import-kind``'s choices in words, from the foreign-tool registry: "a, b or c"."""
    names = foreign_tools.list_tools()
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


ImportOpt = Annotated[
    Path | None,
    typer.Option(
        "--import",
        help="Evaluate a set made by another tool: MTT's images_best.pt (labels_best.pt beside "
        "it, and lr_best.pt where saved, else pass --lr), a DC/DSA/DM or CAFE res_*.pt, or a "
        "folder holding one. Loaded as tensors only (never arbitrary pickles). Needs --dataset; "
        "MTT's ZCA: the dataset's default, --no-zca, or --zca-file PATH.",
        rich_help_panel=IMPORT,
    ),
]

ImportKindOpt = Annotated[
    str | None,
    typer.Option(
        "--import-kind",
        help=f"{_kind_choices()}, where the file name does not say "
        "(images_*.pt is MTT's, res_*.pt DC's; CAFE names its files as DC does: pass cafe for "
        "them, so that its CIFAR-100 normalisation is used).",
        rich_help_panel=IMPORT,
    ),
]

ExperimentOpt = Annotated[
    int | None,
    typer.Option(
        "--experiment",
        help="Which experiment of a DC/DSA/DM or CAFE res_*.pt to import. (default: 0)",
        rich_help_panel=IMPORT,
    ),
]


def baseline_config_of(options: dict) -> baselines.BaselineConfig:
    """The BaselineConfig of ``--baseline`` and its options; DdppError for an option of
    another method (e.g. --forgetting-epochs with herding)."""
    method = options["baseline"].strip().lower()
    known = method in coresets.list_coresets(settings=False)
    own = coresets.get_coreset(method) if known else None
    for name in coresets.coreset_options():
        if options[name] is None or options[name] is False:
            continue
        info = coresets.owner(name)
        moot = options["buffer"] and name in info.unused_with_buffer
        if own is None or name not in own.options or moot:
            flag = "--" + name.replace("_", "-")
            raise DdppError(f"{flag} only applies to {where_applies(info, name)}.")
    given = settings({name: options[name] for name in BASELINE_SETTINGS}, BASELINE_SETTINGS)
    return baselines.BaselineConfig(
        method=method, zca=False if options["no_zca"] else None, **given
    )


def where_applies(info: coresets.CoresetInfo, option: str) -> str:
    """Where a coreset's own ``option`` applies, in words."""
    if option in info.unused_with_buffer:
        return (f"--baseline {info.name} without --buffer (with one, the expert's network is "
                "used as it is)")  # fmt: skip
    return f"--baseline {info.name}"
