"""dm: distribution matching (Zhao & Bilen 2023): its record and its iteration (the maths:
``engine/distribution_matching.py``; docs/methods.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ddpp_cli.engine.distill.methods.base import MethodStep
from ddpp_cli.engine.distill.methods.registry import MethodInfo
from ddpp_cli.engine.distribution_matching import (
    distribution_matching_iteration,
    frozen_network,
)

if TYPE_CHECKING:
    from ddpp_cli.engine.distill.state import DistillState

ITERATIONS = 20000  # DatasetCondensation main_DM.py
# DM's readme.md: "for CIFAR10 dataset we set --lr_img 1 for --ipc = 1/10/50, --lr_img 10 for
# --ipc = 100/200/500/1000/1250. For CIFAR100 dataset, we set --lr_img 1 for --ipc =
# 1/10/50/100/125." It says nothing of other datasets: main_DM.py's default, 1.
LARGE_IPC = 100
LARGE_IPC_DATASETS = ("cifar10",)  # where lr_img 10 from LARGE_IPC on


class DistributionMatchingStep(MethodStep):
    """One DM iteration: a frozen random network, the per-class mean embeddings matched."""

    def iterate(self, state: DistillState, generator: torch.Generator) -> dict[str, Any]:
        c = self.config
        network = frozen_network(
            c.arch, self.channels, self.num_classes, self.image_size, c.seed, state.iteration
        ).to(self.device)
        loss = distribution_matching_iteration(
            network, state.images, self.labels, state.opt_images, self.real_by_class,
            batch_real=c.batch_real, dsa=self.dsa, generator=generator,
        )  # fmt: skip
        return {"loss": loss}


def preset(dataset: str, ipc: int, derive: bool) -> dict[str, Any]:
    """The paper's defaults; lr_img as DM's readme.md sets it: 10 on CIFAR-10 from IPC 100,
    else 1 (CIFAR-100 keeps 1 at IPC 100 and 125; other datasets: main_DM.py's default)."""
    lr_img = 10.0 if dataset in LARGE_IPC_DATASETS and ipc >= LARGE_IPC else 1.0
    return {"iterations": ITERATIONS, "lr_img": lr_img, "batch_real": 256, "init": "real"}


DM = MethodInfo(
    name="dm",
    label="DM",
    summary="distribution matching",
    doc="docs/methods.md, DM",
    preset=preset,
    preset_source="DatasetCondensation main_DM.py and readme.md",
    paper_budget=ITERATIONS,
    step=DistributionMatchingStep,
    settings=("image_size", "channels", "batch_real"),
    needed=("batch_real",),
    quick_budget=200,
    quick_cuts={"batch_real": 128},
)
