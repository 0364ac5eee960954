"""Plain supervised training and testing of one network, shared by buffer and evaluate."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.models import uses_batchnorm


def minibatches(
    n: int, batch_size: int, generator: torch.Generator, min_size: int = 1
) -> Iterator[torch.Tensor]:
    """Index batches of one shuffled epoch over ``n`` samples (the last one may be smaller).

    A last batch smaller than ``min_size`` is merged into the one before it (BatchNorm cannot
    train on a batch of one image).
    """
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < min_size:
        batches[-2:] = [torch.cat(batches[-2:])]
    yield from batches


def min_batch_size(model: nn.Module) -> int:
    """The smallest batch ``model`` can train on: 2 with BatchNorm layers, else 1."""
    return 2 if uses_batchnorm(model) else 1


def train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    dsa: DSA,
    generator: torch.Generator,
) -> float:
    """One epoch of cross-entropy training with DSA; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for index in minibatches(len(images), batch_size, generator, min_batch_size(model)):
        index = index.to(images.device)
        batch = images[index]
        if dsa.enabled:
            batch = dsa(batch, generator)
        loss = F.cross_entropy(model(batch), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(index)
        count += len(index)
    return float(total) / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted class of every image (evaluation mode)."""
    model.eval()
    return torch.cat([model(chunk).argmax(dim=1) for chunk in images.split(batch_size)])


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024
) -> float:
    """Fraction of ``images`` whose predicted class equals ``labels``."""
    if len(images) == 0:
        return float("nan")
    return (predict(model, images, batch_size) == labels).float().mean().item()
