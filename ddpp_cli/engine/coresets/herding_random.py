"""The herding-random coreset: herding in the features of a randomly initialised ConvNet
(ddpp's herding before issue 16; fast, but not the benchmark's baseline). Trains nothing, so
nothing is kept; deterministic given the seed."""

from __future__ import annotations

from typing import Any

import torch

from ddpp_cli.engine import data, models
from ddpp_cli.engine.coresets.herding import embed, herding_order
from ddpp_cli.engine.coresets.pool import CoresetRequest, check_ipc
from ddpp_cli.engine.coresets.registry import CoresetInfo
from ddpp_cli.engine.device import derive_seed, seeded
from ddpp_cli.engine.events import OnEvent


def herding_coreset(
    train: data.ImageSplit,
    ipc: int,
    *,
    arch: str = "convnet",
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Indices of ``ipc`` herding-selected images per class, class-major, in pick order.

    ``train`` is in model-input space (normalised or whitened); features come from a randomly
    initialised ``arch`` network seeded from ``derive_seed(seed, "herding", arch)``.
    """
    check_ipc(train, ipc)
    channels, height, width = (int(s) for s in train.images.shape[1:])
    with seeded(derive_seed(seed, "herding", arch)):
        model = models.create(arch, channels, train.num_classes, (height, width))
    features = embed(model.to(torch.device(device)), train.images)
    chosen = []
    for label in range(train.num_classes):
        members = torch.nonzero(train.labels == label).flatten()
        chosen.append(members[herding_order(features[members], ipc)])
    return torch.cat(chosen)


def select_herding_random(
    request: CoresetRequest, run: int, device: torch.device | str, emit: OnEvent
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Herding in the features of a random ``request.arch`` network."""
    arch, seed = request.arch, request.seed
    found = herding_coreset(request.train, request.ipc, arch=arch, seed=seed, device=device)
    return found, {"features": {"kind": "random-init", "arch": arch, "seed": seed}}


HERDING_RANDOM = CoresetInfo(
    "herding-random",
    "Herding (random features)",
    "herding-random (on a random network's features)",
    select_herding_random,
)
