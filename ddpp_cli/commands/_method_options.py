"""The options of the distillation methods other than tm (one help panel, named from the
method registry), and tm's labels and DATM's options (their own panel), declared once as
``Annotated`` aliases like :mod:`._options`."""

from __future__ import annotations

from ddpp_cli.commands._options import option
from ddpp_cli.commands._settings import preset_default, value_text
from ddpp_cli.engine.distill import methods as distill_methods
from ddpp_cli.engine.presets import DATM_LR_LABELS

PANEL = "Methods " + ", ".join(
    name
    for name in distill_methods.list_methods()
    if not distill_methods.get_method(name).needs_buffer
)

# dc, dsa, dm, cafe, cafe-dsa, kip: the real images and the network trained between steps.
BatchRealOpt = option(
    int | None,
    PANEL,
    "--batch-real",
    help=preset_default(
        "all methods but tm: real images drawn per class per step (matching, target).",
        "batch_real",
    ),
)
LrNetOpt = option(
    float | None,
    PANEL,
    "--lr-net",
    help=preset_default(
        "dc/dsa/cafe/cafe-dsa: SGD lr of the network trained on the synthetic set between steps.",
        "lr_net",
    ),
)
OuterLoopOpt = option(
    int | None,
    PANEL,
    "--outer-loop",
    help="dc/dsa: image steps per iteration (default: the reference's get_loops of the IPC).",
)
InnerLoopOpt = option(
    int | None,
    PANEL,
    "--inner-loop",
    help="dc/dsa: network epochs on the synthetic set between image steps (default: the "
    "reference's get_loops of the IPC).",
)
MaxImageStepsOpt = option(
    int | None,
    PANEL,
    "--max-image-steps",
    help=preset_default(
        "cafe/cafe-dsa: at most N image steps per iteration (the reference has no bound).",
        "max_image_steps",
    ),
)
MaxInnerEpochsOpt = option(
    int | None,
    PANEL,
    "--max-inner-epochs",
    help=preset_default(
        "cafe/cafe-dsa: at most N network epochs per inner phase (the reference has no bound).",
        "max_inner_epochs",
    ),
)


# kip's settings (docs/methods.md, KIP).
EnsembleOpt = option(
    int | None, PANEL, "--ensemble",
    help=preset_default("kip: random ConvNets whose NTKs are averaged.", "ensemble"),
)  # fmt: skip
KernelWidthOpt = option(
    int | None, PANEL, "--kernel-width",
    help=preset_default("kip: channels of the kernel's ConvNets.", "kernel_width"),
)  # fmt: skip
KrrRegOpt = option(
    float | None, PANEL, "--krr-reg",
    help=preset_default("kip: KRR ridge, times tr(K_ss)/n (KIP's).", "krr_reg"),
)  # fmt: skip
LearnLabelsOpt = option(
    bool | None, PANEL, "--learn-labels/--fixed-labels",
    help=preset_default("kip: learn the label vectors too.", "learn_labels"),
)  # fmt: skip
_KIP_LR_LABELS = distill_methods.get_method("kip").preset("cifar10", 10, False)["lr_labels"]
LrLabelsOpt = option(
    float | None, PANEL, "--lr-labels",
    help=(
        "kip: Adam lr of the label vectors (default: "
        f"{value_text(_KIP_LR_LABELS)}); tm with --labels learned: their "
        "SGD lr (momentum 0.9, DATM's lr_y; default: DATM's config for the dataset and IPC, "
        f"else {value_text(DATM_LR_LABELS)})."
    ),
)  # fmt: skip

# tm's labels and DATM's window and skip rule (docs/distill.md, Labels (DATM)).
DATM_PANEL = "tm: labels (DATM)"
LabelsOpt = option(
    str | None, DATM_PANEL, "--labels",
    help="tm: hard (default: class indices), teacher (the experts' averaged logits of real "
    "images they classify correctly; soft CE) or learned (those logits optimised with the "
    "images); teacher and learned take DATM's configs as preset where they exist.",
)  # fmt: skip
MinStartEpochOpt = option(
    int | None, DATM_PANEL, "--min-start-epoch",
    help="tm: lowest start epoch T⁻ (DATM's min_start_epoch; default 0).",
)  # fmt: skip
MaxStartFromOpt = option(
    int | None, DATM_PANEL, "--max-start-from",
    help="tm: the upper start epoch at iteration 0, growing to --max-start-epoch over "
    "--expansion-end iterations (DATM's current_max_start_epoch; default: off).",
)  # fmt: skip
ExpansionEndOpt = option(
    int | None, DATM_PANEL, "--expansion-end",
    help="tm: iterations over which the window grows (DATM's expansion_end_epoch).",
)  # fmt: skip
SkipThresholdOpt = option(
    float | None, DATM_PANEL, "--skip-threshold",
    help="tm: no update when the normalised matching loss exceeds this (DATM's threshold; "
    "default: off).",
)  # fmt: skip
