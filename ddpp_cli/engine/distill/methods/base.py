"""What the methods without a buffer share (dc, dsa, dm, cafe): :class:`MethodStep`, one
iteration on a fresh network from the real images, and :func:`fresh_network`.

The maths lives in ``engine/gradient_matching.py``, ``engine/distribution_matching.py`` and
``engine/cafe.py``; a method's step only gives each iteration its network (initialised from a
seed derived from the run's seed and the iteration, so a resumed run draws the same one), the
run's ``matching`` generator, the per-class real pools (validation images excluded) and the
images' optimizer, and returns the metrics line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ddpp_cli.engine import models
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.device import derive_seed, seeded

if TYPE_CHECKING:
    from ddpp_cli.engine.distill.config import DistillConfig
    from ddpp_cli.engine.distill.setup import RunSetup
    from ddpp_cli.engine.distill.state import DistillState


def fresh_network(
    config: DistillConfig,
    channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    iteration: int,
    device: torch.device,
) -> nn.Module:
    """The trainable network of iteration ``iteration`` (DC, DSA, CAFE), seeded from
    (seed, method, iteration), in training mode on ``device``."""
    key = derive_seed(config.seed, f"{config.method}-network", config.arch, iteration)
    with seeded(key):
        model = models.create(config.arch, channels, num_classes, image_size)
    return model.to(device).train()


class MethodStep:
    """One iteration of a method without buffer on a :class:`DistillState` (no learned lr);
    each method's subclass implements :meth:`iterate`."""

    def __init__(self, setup: RunSetup) -> None:
        self.config = setup.config
        self.real_by_class = setup.real_by_class
        self.labels = setup.labels
        self.channels = setup.prepared.channels
        self.image_size = setup.prepared.image_size
        self.device = setup.device
        self.dsa = DSA(self.config.matching_dsa)

    @property
    def num_classes(self) -> int:
        return len(self.real_by_class)

    def network(self, state: DistillState) -> nn.Module:
        """This iteration's fresh trainable network (:func:`fresh_network`)."""
        return fresh_network(
            self.config, self.channels, self.num_classes, self.image_size, state.iteration,
            self.device,
        )  # fmt: skip

    def step(self, state: DistillState) -> dict[str, Any]:
        """Iteration ``state.iteration + 1``: its loss (as the reference logs it: per class)
        and the method's own numbers. The caller checks the guards (``step.divergence``)."""
        return self.iterate(state, state.generators["matching"])

    def iterate(self, state: DistillState, generator: torch.Generator) -> dict[str, Any]:
        raise NotImplementedError
