"""One iteration of the methods other than tm (:class:`MethodStep`): DC and DSA (gradient
matching), DM (distribution matching) and CAFE, on a fresh network per iteration.

The maths lives in ``engine/gradient_matching.py``, ``engine/distribution_matching.py`` and
``engine/cafe.py``; this module only gives each iteration its network (initialised from a seed
derived from the run's seed and the iteration, so a resumed run draws the same one), the run's
``matching`` generator, the per-class real pools (validation images excluded) and the images'
optimizer, and returns the metrics line.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ddpp_cli.engine import models
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.cafe import CafeSettings, cafe_iteration, image_lr
from ddpp_cli.engine.device import derive_seed, seeded
from ddpp_cli.engine.distill.config import DistillConfig
from ddpp_cli.engine.distill.state import DistillState
from ddpp_cli.engine.distribution_matching import (
    distribution_matching_iteration,
    frozen_network,
)
from ddpp_cli.engine.gradient_matching import MatchingLoops, gradient_matching_iteration


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
    """One iteration of dc, dsa, dm or cafe on a :class:`DistillState` (no learned lr)."""

    def __init__(
        self,
        config: DistillConfig,
        real_by_class: list[torch.Tensor],
        labels: torch.Tensor,
        channels: int,
        image_size: tuple[int, int],
        device: torch.device,
    ) -> None:
        self.config = config
        self.real_by_class = real_by_class
        self.labels = labels
        self.channels = channels
        self.image_size = image_size
        self.device = device
        c = config
        self.dsa = DSA(c.matching_dsa)
        if c.method in ("dc", "dsa"):
            self.loops = MatchingLoops(
                outer_loop=c.outer_loop, inner_loop=c.inner_loop, batch_real=c.batch_real,
                lr_net=c.lr_net, dsa_strategy=c.matching_dsa,
            )  # fmt: skip
        elif c.method == "cafe":
            self.cafe = CafeSettings(
                batch_real=c.batch_real, lr_net=c.lr_net, dsa_strategy=c.matching_dsa,
                max_image_steps=c.max_image_steps, max_inner_epochs=c.max_inner_epochs,
            )  # fmt: skip

    def step(self, state: DistillState) -> dict[str, Any]:
        """Iteration ``state.iteration + 1``: its loss (as the reference logs it: per class)
        and the method's own numbers (CAFE: image steps, inner epochs, whether a cap ended a
        loop; its image lr). The caller checks the guards (``step.divergence``)."""
        c, generator = self.config, state.generators["matching"]
        num_classes = len(self.real_by_class)
        if c.method == "dm":
            network = frozen_network(
                c.arch, self.channels, num_classes, self.image_size, c.seed, state.iteration
            ).to(self.device)
            loss = distribution_matching_iteration(
                network, state.images, self.labels, state.opt_images, self.real_by_class,
                batch_real=c.batch_real, dsa=self.dsa, generator=generator,
            )  # fmt: skip
            return {"loss": loss}
        network = fresh_network(
            c, self.channels, num_classes, self.image_size, state.iteration, self.device
        )
        if c.method == "cafe":
            lr = image_lr(c.lr_img, state.iteration)  # ×0.5 at 1200, 1600, 1800
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
        loss = gradient_matching_iteration(
            network, state.images, self.labels, state.opt_images, self.real_by_class,
            self.loops, generator,
        )  # fmt: skip
        return {"loss": loss}
