"""cafe and cafe-dsa: CAFE (Wang et al. 2022), aligning ConvNet's features, without and with
Siamese DSA: their records and their iteration (the maths: ``engine/cafe.py``; docs/methods.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ddpp_cli.engine.cafe import CafeSettings, cafe_iteration, convnet_layer_features, image_lr
from ddpp_cli.engine.distill.methods.base import MethodStep
from ddpp_cli.engine.distill.methods.registry import MethodInfo
from ddpp_cli.engine.errors import DdppError

if TYPE_CHECKING:
    from torch import nn

    from ddpp_cli.engine.distill.config import DistillConfig
    from ddpp_cli.engine.distill.setup import RunSetup
    from ddpp_cli.engine.distill.state import DistillState

ITERATIONS = 2000  # CAFE distill.py


class CafeStep(MethodStep):
    """One CAFE iteration: a fresh network, the image steps and inner epochs (capped)."""

    def __init__(self, setup: RunSetup) -> None:
        super().__init__(setup)
        c = self.config
        self.cafe = CafeSettings(
            batch_real=c.batch_real, lr_net=c.lr_net, dsa_strategy=c.matching_dsa,
            max_image_steps=c.max_image_steps, max_inner_epochs=c.max_inner_epochs,
        )  # fmt: skip

    def iterate(self, state: DistillState, generator: torch.Generator) -> dict[str, Any]:
        """The loss, image steps, inner epochs, whether a cap ended a loop, and the image lr."""
        network = self.network(state)
        lr = image_lr(self.config.lr_img, state.iteration)  # ×0.5 at 1200, 1600, 1800
        for group in state.opt_images.param_groups:
            group["lr"] = lr
        result = cafe_iteration(
            network, state.images, self.labels, state.opt_images, self.real_by_class,
            self.cafe, generator,
        )  # fmt: skip
        return {
            "loss": result.loss,
            "image_steps": result.image_steps,
            "inner_epochs": result.inner_epochs,
            "capped": result.capped,
            "lr_img": lr,
        }


def preset(dataset: str, ipc: int, derive: bool) -> dict[str, Any]:
    """The paper's defaults, with both loops capped at 100 (the reference has no cap)."""
    return {
        "iterations": ITERATIONS, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256,
        "init": "noise", "max_image_steps": 100, "max_inner_epochs": 100,
    }  # fmt: skip


def check(config: DistillConfig) -> None:
    """ConvNet only: CAFE aligns the features of its blocks."""
    if not config.arch.startswith("convnet"):
        raise DdppError(
            f"--method {config.method} aligns the features of ConvNet's blocks (its reference's "
            f"network); use --arch convnet, not '{config.arch}'."
        )


def check_network(config: DistillConfig, network: nn.Module, image: torch.Tensor) -> None:
    convnet_layer_features(network, image)  # DdppError if it has none


CAFE = MethodInfo(
    name="cafe",
    label="CAFE",
    summary="CAFE without/with Siamese DSA",
    doc="docs/methods.md, CAFE",
    preset=preset,
    preset_source="CAFE distill.py",
    paper_budget=ITERATIONS,
    step=CafeStep,
    settings=(
        "image_size",
        "channels",
        "batch_real",
        "lr_net",
        "max_image_steps",
        "max_inner_epochs",
    ),
    needed=("batch_real", "lr_net", "max_image_steps", "max_inner_epochs"),
    matching_dsa=False,
    check=check,
    check_network=check_network,
    quick_budget=4,
    quick_cuts={"batch_real": 64, "max_image_steps": 10, "max_inner_epochs": 10},
)
# CAFE's distill.py with --method DSA (and a --dsa_strategy): Siamese DSA per class in the image
# step, per-sample DSA in the inner epochs; every other setting as CAFE's (docs/methods.md).
CAFE_DSA = replace(
    CAFE,
    name="cafe-dsa",
    label="CAFE+DSA",
    doc="docs/methods.md, CAFE+DSA",
    preset_source="CAFE distill.py --method DSA",
    matching_dsa=True,
    quick_budget=3,
    quick_cuts={"batch_real": 64, "max_image_steps": 10, "max_inner_epochs": 5},
)
