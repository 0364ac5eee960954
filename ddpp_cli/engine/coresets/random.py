"""The random coreset: ``ipc`` real training images per class, drawn uniformly; run ``r`` of an
evaluation draws its own subset (seed derived from the run), so the std covers the choice of
subset too."""

from __future__ import annotations

import torch

from ddpp_cli.engine import data
from ddpp_cli.engine.coresets.pool import CoresetRequest, check_ipc
from ddpp_cli.engine.coresets.registry import CoresetInfo
from ddpp_cli.engine.device import derive_seed, make_generator
from ddpp_cli.engine.events import OnEvent


def random_coreset(train: data.ImageSplit, ipc: int, seed: int) -> torch.Tensor:
    """Indices of ``ipc`` uniformly drawn images per class, class-major (seeded)."""
    check_ipc(train, ipc)
    generator = make_generator(seed, "random_coreset")
    shuffled = data.shuffled_per_class(train.labels, train.num_classes, generator)
    return torch.cat([members[:ipc] for members in shuffled])


def select_random(
    request: CoresetRequest, run: int, device: torch.device | str, emit: OnEvent
) -> tuple[torch.Tensor, dict]:
    """Run ``run``'s own uniform draw; nothing to record."""
    seed = derive_seed(request.seed, "random", run)
    return random_coreset(request.train, request.ipc, seed), {}


RANDOM = CoresetInfo("random", "Random", "random", select_random, per_run=True)
