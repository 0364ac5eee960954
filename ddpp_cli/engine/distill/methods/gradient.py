"""dc and dsa: gradient matching (Zhao et al. 2021), without and with Siamese DSA: their
records and their iteration (the maths: ``engine/gradient_matching.py``; docs/methods.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ddpp_cli.engine import models
from ddpp_cli.engine.distill.methods.base import MethodStep
from ddpp_cli.engine.distill.methods.registry import MethodInfo, PresetFn
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.gradient_matching import LOOPS, MatchingLoops, gradient_matching_iteration

if TYPE_CHECKING:
    from torch import nn

    from ddpp_cli.engine.distill.config import DistillConfig
    from ddpp_cli.engine.distill.setup import RunSetup
    from ddpp_cli.engine.distill.state import DistillState

ITERATIONS = 1000  # DatasetCondensation main.py
SETTINGS = ("image_size", "channels", "batch_real", "lr_net", "outer_loop", "inner_loop")


class GradientMatchingStep(MethodStep):
    """One DC/DSA iteration: a fresh network, the outer and inner loops."""

    def __init__(self, setup: RunSetup) -> None:
        super().__init__(setup)
        c = self.config
        self.loops = MatchingLoops(
            outer_loop=c.outer_loop, inner_loop=c.inner_loop, batch_real=c.batch_real,
            lr_net=c.lr_net, dsa_strategy=c.matching_dsa,
        )  # fmt: skip

    def iterate(self, state: DistillState, generator: torch.Generator) -> dict[str, Any]:
        loss = gradient_matching_iteration(
            self.network(state), state.images, self.labels, state.opt_images,
            self.real_by_class, self.loops, generator,
        )  # fmt: skip
        return {"loss": loss}


def preset_of(init: str) -> PresetFn:
    """The paper's defaults with initial images ``init``; the loops by IPC (get_loops)."""

    def preset(dataset: str, ipc: int, derive: bool) -> dict[str, Any]:
        values = {
            "iterations": ITERATIONS, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256,
            "init": init,
        }  # fmt: skip
        if ipc in LOOPS:
            values["outer_loop"], values["inner_loop"] = LOOPS[ipc]
        return values

    return preset


def check(config: DistillConfig) -> None:
    """Loop lengths exist for the IPC (the reference's get_loops) or are given."""
    if config.outer_loop is None or config.inner_loop is None:
        listed = ", ".join(map(str, LOOPS))
        raise DdppError(
            f"--method {config.method} has loop lengths only for IPC {listed} (the "
            f"reference's get_loops); give --outer-loop and --inner-loop for IPC {config.ipc}."
        )


def check_network(config: DistillConfig, network: nn.Module, image: torch.Tensor) -> None:
    """No BatchNorm: the reference's frozen-statistics step is not implemented."""
    if models.uses_batchnorm(network):
        raise DdppError(
            f"--method {config.method} with BatchNorm needs the reference's frozen-statistics "
            f"step, which ddpp does not implement; use --arch {config.arch.replace('-bn', '')}."
        )


_SHARED = {
    "summary": "gradient matching without/with Siamese DSA",
    "preset_source": "DatasetCondensation main.py",
    "paper_budget": ITERATIONS,
    "step": GradientMatchingStep,
    "settings": SETTINGS,
    "needed": ("batch_real", "lr_net", "outer_loop"),
    "derived": ("outer_loop", "inner_loop"),
    "check": check,
    "check_network": check_network,
    "quick_cuts": {"batch_real": 64},
}
DC = MethodInfo(
        name="dc", label="DC", doc="docs/methods.md, DC", preset=preset_of("noise"),
        matching_dsa=False, quick_budget=40, **_SHARED,
)  # fmt: skip
DSA = MethodInfo(
        name="dsa", label="DSA", doc="docs/methods.md, DSA", preset=preset_of("real"),
        quick_budget=100, **_SHARED,
)  # fmt: skip
