"""The options of the distillation methods other than tm (one help panel, named from the
method registry), declared once as ``Annotated`` aliases like :mod:`._options`."""

from __future__ import annotations

from ddpp_cli.commands._options import option
from ddpp_cli.commands._settings import preset_default
from ddpp_cli.engine.distill import methods as distill_methods

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
LrLabelsOpt = option(
    float | None, PANEL, "--lr-labels",
    help=preset_default("kip: Adam lr of the label vectors.", "lr_labels"),
)  # fmt: skip
