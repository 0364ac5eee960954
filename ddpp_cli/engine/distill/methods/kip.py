"""kip: KIP, kernel inducing points (Nguyen, Chen & Lee 2021): its record and its iteration (the
maths: ``engine/kip/``; docs/methods.md, KIP).

Each iteration draws a class-balanced target batch of real images (``batch_real`` per class)
and the kernel's ensemble of random ConvNets (seeded from the run's seed and the iteration, so a
resumed run draws the same ones), regresses the target labels on the support set with KIP's
kernel ridge regression and takes one Adam step on the images (and, with ``--learn-labels``,
on the label vectors) against ½·mean squared error.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch

from ddpp_cli.engine import models, zca
from ddpp_cli.engine.device import derive_seed, seeded
from ddpp_cli.engine.distill.methods.registry import MethodInfo
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.kip import kernels, krr

if TYPE_CHECKING:
    from torch import nn

    from ddpp_cli.engine.distill.config import DistillConfig
    from ddpp_cli.engine.distill.setup import RunSetup
    from ddpp_cli.engine.distill.state import DistillState

# KIP's colab (google-research kip/KIP.ipynb): LEARNING_RATE = 4e-2 (Adam, images and labels
# alike), TARGET_BATCH_SIZE = 5000 (500 per class of CIFAR-10), loss_acc_fn's reg = 1e-6.
LR = 0.04
TARGET_PER_CLASS = 500
# KIP's published sets are checkpoints after 1000 steps (gs://kip-datasets: ..._ckpt1000.npz).
ITERATIONS = 1000
# ddpp's finite stand-in for KIP's infinite-width ConvNet kernel (docs/methods.md, KIP).
ENSEMBLE = 4
KERNEL_WIDTH = 128


def kernel_arch(config: DistillConfig) -> str:
    """The ConvNet of the kernel's ensemble: the run's ConvNet with ``kernel_width`` channels."""
    return re.sub(r"-w\d+$", "", config.arch) + f"-w{config.kernel_width}"


def kernel_label(ensemble: int, width: int) -> str:
    """The kernel, as tables name it: e.g. "KIP (empirical NTK, 4 × ConvNet-w128)"."""
    return f"KIP (empirical NTK, {ensemble} × ConvNet-w{width})"


class KipStep:
    """One KIP iteration on a :class:`DistillState` (Adam on the images and learned labels)."""

    def __init__(self, setup: RunSetup) -> None:
        self.config = setup.config
        self.real_by_class = setup.real_by_class
        self.channels = setup.prepared.channels
        self.image_size = setup.prepared.image_size
        self.num_classes = len(setup.real_by_class)
        self.fixed_targets = krr.centred_one_hot(setup.labels, self.num_classes)
        self.arch = kernel_arch(self.config)

    def networks(self, iteration: int, device: torch.device) -> list[nn.Module]:
        """The kernel's ensemble of iteration ``iteration``: fresh random ConvNets, each seeded
        from (seed, iteration, member)."""
        ensemble = []
        for member in range(self.config.ensemble):
            key = derive_seed(self.config.seed, "kip-network", self.arch, iteration, member)
            with seeded(key):
                network = models.create(self.arch, self.channels, 2, self.image_size)
            ensemble.append(network.to(device))
        return ensemble

    def target_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_real`` real images per class (all of a smaller class) and their centred
        one-hot labels."""
        images, labels = [], []
        for c, pool in enumerate(self.real_by_class):
            chosen = torch.randperm(len(pool), generator=generator)[: self.config.batch_real]
            images.append(pool[chosen.to(pool.device)])
            labels.append(torch.full((len(chosen),), c, dtype=torch.long))
        y = krr.centred_one_hot(torch.cat(labels), self.num_classes)
        return torch.cat(images), y.to(images[0].device)

    def step(self, state: DistillState) -> dict[str, Any]:
        """Iteration ``state.iteration + 1``: the KRR loss on a target batch and the KRR's
        accuracy on it (before the step)."""
        c = self.config
        x_target, y_target = self.target_batch(state.generators["matching"])
        networks = self.networks(state.iteration, state.images.device)
        y_support = state.targets if state.targets is not None else self.fixed_targets
        k_ss = kernels.empirical_ntk(networks, state.images)
        k_ts = kernels.empirical_ntk(networks, x_target, state.images)
        loss, accuracy = krr.kip_loss(k_ts, k_ss, y_support.to(k_ss.device), y_target, c.krr_reg)
        state.zero_grad()
        loss.backward()
        state.optimizer_step()
        return {"loss": float(loss.detach()), "krr_accuracy": float(accuracy)}


def preset(dataset: str, ipc: int, derive: bool) -> dict[str, Any]:
    """KIP's defaults (its colab and paper): Adam lr 0.04 for images and labels, 500 target
    images per class, reg 1e-6, labels learned, real initial images."""
    return {
        "iterations": ITERATIONS, "lr_img": LR, "lr_labels": LR, "batch_real": TARGET_PER_CLASS,
        "init": "real", "ensemble": ENSEMBLE, "kernel_width": KERNEL_WIDTH,
        "krr_reg": krr.DEFAULT_REGULARIZATION, "learn_labels": True,
    }  # fmt: skip


def check(config: DistillConfig) -> None:
    """A ConvNet without BatchNorm; a finite regulariser; a positive label lr."""
    if not re.fullmatch(r"convnet(-d[1-9]\d*)?(-w[1-9]\d*)?", config.arch):
        raise DdppError(
            "--method kip's kernel is the NTK of ConvNets without BatchNorm; use --arch convnet "
            f"(or convnet-dN), not '{config.arch}'."
        )
    if config.krr_reg is None:
        raise DdppError("--krr-reg is needed for --method kip.")
    if not (math.isfinite(config.krr_reg) and config.krr_reg >= 0):
        raise DdppError(f"--krr-reg must be a number ≥ 0 (got {config.krr_reg}).")
    if config.learn_labels and not (
        config.lr_labels is not None and math.isfinite(config.lr_labels) and config.lr_labels > 0
    ):
        raise DdppError(
            f"--lr-labels must be a positive number with --learn-labels (got {config.lr_labels})."
        )


def check_network(config: DistillConfig, network: nn.Module, image: torch.Tensor) -> None:
    kernels.check_network(network, config.arch)


KIP = MethodInfo(
    name="kip",
    # The preset's kernel; a profile's cut of ensemble/kernel_width shows in the budget column.
    label=kernel_label(ENSEMBLE, KERNEL_WIDTH).replace("NTK, ", "NTK, preset "),
    summary="KIP (kernel ridge regression on a ConvNet NTK)",
    doc="docs/methods.md, KIP",
    preset=preset,
    preset_source="KIP's colab (google-research kip/) and paper",
    paper_budget=ITERATIONS,
    step=KipStep,
    settings=(
        "image_size",
        "channels",
        "batch_real",
        "ensemble",
        "kernel_width",
        "krr_reg",
        "learn_labels",
        "lr_labels",
    ),
    needed=("batch_real", "ensemble", "kernel_width"),
    matching_dsa=False,
    check=check,
    check_network=check_network,
    optimizer="adam",
    allows_zca=True,  # KIP's own ZCA variant; zca None: the dataset's default (CIFAR on)
    zca_fit=zca.fit_kip,
    # 80 iterations ≈ 2 min on 2 CPU cores; fixed labels: at this budget learned ones score 68 %
    # trained on their vectors (62 % on hard labels), fixed ones 70 % (docs/methods.md, KIP).
    quick_budget=80,
    quick_cuts={"batch_real": 10, "ensemble": 2, "kernel_width": 32, "learn_labels": False},
)
