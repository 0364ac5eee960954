"""The herding coreset: per class, greedy mean matching (Welling 2009, as used by iCaRL and the
DC benchmark) in the penultimate-layer features of a *trained* network (docs/methods.md): the
last snapshot of a buffer's expert, else a ConvNet trained here for ``feature_epochs``.

Deterministic given the seed: every evaluation run trains on the same coreset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpp_cli.engine import data, models
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.buffer import load_trajectory
from ddpp_cli.engine.coresets.pool import CoresetRequest, check_ipc
from ddpp_cli.engine.coresets.registry import CoresetInfo
from ddpp_cli.engine.device import derive_seed, make_generator, seeded
from ddpp_cli.engine.distilled import file_sha256
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.functional import ParamLayout, load_flat
from ddpp_cli.engine.training import train_epoch

FEATURE_BATCH = 512
# Without a buffer, herding's feature network trains as long as an expert of ``ddpp buffer``
# (its default: 50 epochs), so that both sources give the same kind of network. A CPU budget
# lowers it.
HERDING_FEATURE_EPOCHS = 50


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy herding: step k picks the unused row that brings the mean of the k picked rows
    closest (Euclidean) to the mean of all rows; returns ``count`` row indices in pick order.

    The distance is computed as ‖k·μ − Σ_picked φ − φ_i‖ (docs/methods.md), not divided by k, so
    that ties are exact where the features allow; a tie goes to the lowest index."""
    if features.ndim != 2 or not 1 <= count <= features.shape[0]:
        raise ValueError("herding needs (N, D) features and 1 <= count <= N")
    feats = features.detach().to(torch.float64)
    target = feats.mean(dim=0)
    total = torch.zeros_like(target)
    used = torch.zeros(feats.shape[0], dtype=torch.bool, device=feats.device)
    picks = []
    for k in range(1, count + 1):
        distance = ((k * target - total - feats) ** 2).sum(dim=1)
        distance[used] = float("inf")
        pick = int(distance.argmin())
        picks.append(pick)
        used[pick] = True
        total += feats[pick]
    return torch.tensor(picks, dtype=torch.int64)


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """Penultimate-layer embedding (the input of the model's last Linear layer), on the CPU."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    device = next(model.parameters()).device
    model.eval()
    try:
        for chunk in images.split(batch_size):
            model(chunk.to(device))
    finally:
        handle.remove()
    return torch.cat([c.flatten(1).cpu() for c in captured])


@dataclass(frozen=True)
class FeatureEpoch:
    """Progress event: one epoch of herding's feature network finished."""

    epoch: int  # 1-based
    epochs: int
    loss: float


@dataclass(frozen=True)
class FeatureSource:
    """Which trained network herding's features came from, for the set's metadata."""

    kind: str  # "expert" (a buffer's expert, last snapshot) or "trained" (trained here)
    arch: str
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "arch": self.arch, **self.details}


def expert_feature_network(
    expert_file: Path, arch: str, train: data.ImageSplit
) -> tuple[nn.Module, FeatureSource]:
    """``arch`` with the parameters of the last snapshot of the expert in ``expert_file``.

    ``train`` must be in the model-input space the expert was trained in (the buffer's
    normalisation or ZCA; ``preprocess.recorded_normalization`` of its manifest, or its
    ``zca.safetensors``). DdppError when the expert belongs to another architecture, number of
    classes or image size.
    """
    channels, height, width = (int(s) for s in train.images.shape[1:])
    model = models.create(arch, channels, train.num_classes, (height, width))
    layout = ParamLayout.of(model)
    trajectory = load_trajectory(Path(expert_file), layout)
    recorded = trajectory.metadata.get("layout")
    if recorded is not None:
        layout.check_compatible(ParamLayout.from_json(recorded), f"expert '{expert_file}'")
    load_flat(model, trajectory.params[-1])
    source = FeatureSource(
        "expert",
        arch,
        {
            "expert_file": str(Path(expert_file).resolve()),
            "expert_sha256": file_sha256(Path(expert_file)),
            "snapshot": trajectory.epochs,
        },
    )
    return model, source


def train_feature_network(
    train: data.ImageSplit,
    arch: str,
    *,
    epochs: int = HERDING_FEATURE_EPOCHS,
    seed: int,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, FeatureSource]:
    """A fresh ``arch`` trained on all of ``train`` with the expert recipe of ``ddpp buffer``
    (SGD lr 0.01, momentum 0, weight decay 0, batch 256, DSA) for ``epochs`` epochs.

    ``on_epoch(epoch, epochs, loss)`` reports progress.
    """
    if epochs < 1:
        raise DdppError(f"the herding feature network needs at least 1 epoch (got {epochs}).")
    channels, height, width = (int(s) for s in train.images.shape[1:])
    with seeded(derive_seed(seed, "herding-features", arch)):
        model = models.create(arch, channels, train.num_classes, (height, width))
    device = torch.device(device)
    model = model.to(device)
    images, labels = train.images.to(device), train.labels.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0, weight_decay=0.0)
    generator = make_generator(seed, "herding-features-batches")
    for epoch in range(1, epochs + 1):
        loss = train_epoch(
            model, images, labels, optimizer, batch_size=256, dsa=DSA(), generator=generator
        )
        if not loss == loss or loss == float("inf"):
            raise DdppError(f"the herding feature network diverged at epoch {epoch}.")
        if on_epoch is not None:
            on_epoch(epoch, epochs, loss)
    recipe = {"epochs": epochs, "lr": 0.01, "momentum": 0.0, "batch_size": 256, "dsa": True}
    return model, FeatureSource("trained", arch, {"seed": seed, **recipe})


def herding_on_features(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int
) -> torch.Tensor:
    """Per-class greedy herding (:func:`herding_order`) on precomputed ``(N, D)`` features;
    indices class-major, each class in pick order."""
    chosen = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[herding_order(features[members], ipc)])
    return torch.cat(chosen)


def trained_herding_coreset(
    train: data.ImageSplit,
    ipc: int,
    model: nn.Module,
    source: FeatureSource,
    *,
    l2_normalize: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Herding on the penultimate features of a trained ``model`` (eval mode, no augmentation).

    Features are raw by default (DeepCore); ``l2_normalize`` scales each to unit length first
    (iCaRL). Returns the indices and the ``features`` record for the set's settings.
    """
    check_ipc(train, ipc)
    features = embed(model.to(torch.device(device)), train.images)
    if l2_normalize:
        features = torch.nn.functional.normalize(features, dim=1)
    indices = herding_on_features(features, train.labels, train.num_classes, ipc)
    return indices, {**source.describe(), "l2_normalize": l2_normalize, "dim": features.shape[1]}


def select_herding(
    request: CoresetRequest, run: int, device: torch.device | str, emit: OnEvent
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Herding in the features of the buffer's expert (``request.expert_file``), else of a
    network trained here for ``feature_epochs`` (its epochs reported as :class:`FeatureEpoch`)."""
    arch = request.arch
    if request.expert_file is not None:
        model, source = expert_feature_network(request.expert_file, arch, request.train)
    else:
        model, source = train_feature_network(
            request.train, arch, epochs=request.option("feature_epochs"), seed=request.seed,
            device=device,
            on_epoch=lambda epoch, epochs, loss: emit(FeatureEpoch(epoch, epochs, loss)),
        )  # fmt: skip
    found, record = trained_herding_coreset(
        request.train, request.ipc, model, source,
        l2_normalize=request.option("l2_normalize"), device=device,
    )  # fmt: skip
    return found, {"features": record}


HERDING = CoresetInfo(
    "herding",
    "Herding",
    "herding (on a trained network's features)",
    select_herding,
    options=("l2_normalize", "feature_epochs"),
    unused_with_buffer=("feature_epochs",),
    trained=True,
    expert_features=True,
)
