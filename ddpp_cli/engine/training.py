"""Plain supervised training and testing of one network, shared by buffer and evaluate.

A network trains on hard labels with cross-entropy, or on a set's label vectors
(:class:`LabelVectors`) with their own loss: soft cross-entropy at a temperature (DATM's
evaluation) or the halved mean squared error (KIP's finite-network transfer); docs/evaluation.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.models import uses_batchnorm


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """−Σ_k softmax(targets / T)_k · log_softmax(logits)_k, averaged over the batch.

    Over the last two dimensions: ``(B, K)`` gives a scalar, ``(M, B, K)`` one loss per member.
    """
    weights = F.softmax(targets / temperature, dim=-1)
    return -(weights * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean(dim=-1)


def halved_mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """½ · mean over the batch and the classes of (logits − targets)² (KIP's ``mse_loss``).

    Over the last two dimensions, as :func:`soft_cross_entropy`.
    """
    return 0.5 * (logits - targets).square().mean(dim=-1).mean(dim=-1)


@dataclass(frozen=True)
class LabelVectors:
    """A set's label vectors ``(N, K)`` and the loss they train with ("soft-ce" at
    ``temperature``, or "mse"); ``text`` names them in tables ("learned labels (MSE)")."""

    vectors: torch.Tensor
    loss: str
    temperature: float | None = None
    text: str = "label vectors"

    def __post_init__(self) -> None:
        if self.loss not in ("soft-ce", "mse"):
            raise ValueError(f"label vectors train with soft-ce or mse (got {self.loss!r})")
        if self.loss == "soft-ce" and not (self.temperature and self.temperature > 0):
            raise ValueError("soft-ce needs a positive temperature")
        if self.vectors.ndim != 2:
            raise ValueError(f"label vectors must be (N, K), got {tuple(self.vectors.shape)}")

    def to(self, device: torch.device | str) -> LabelVectors:
        """The same vectors on ``device``."""
        return LabelVectors(self.vectors.to(device), self.loss, self.temperature, self.text)

    def loss_of(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` against the rows ``targets`` of :attr:`vectors` (same shape)."""
        if self.loss == "mse":
            return halved_mse(logits, targets)
        return soft_cross_entropy(logits, targets, float(self.temperature or 1.0))


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
    vectors: LabelVectors | None = None,
) -> float:
    """One epoch of training with DSA; returns the mean training loss.

    Cross-entropy on ``labels``, or with ``vectors`` their loss on the rows of the batch's images.
    """
    model.train()
    total, count = 0.0, 0
    for index in minibatches(len(images), batch_size, generator, min_batch_size(model)):
        index = index.to(images.device)
        batch = images[index]
        if dsa.enabled:
            batch = dsa(batch, generator)
        if vectors is None:
            loss = F.cross_entropy(model(batch), labels[index])
        else:
            loss = vectors.loss_of(model(batch), vectors.vectors[index])
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
