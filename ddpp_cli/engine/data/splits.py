"""Loaded splits: the ImageSplit record, per-class draws, stratified subsets, normalisation.

Every stratified choice of ddpp (holdout, subsets, coresets, the validation split, real-image
initialisation) draws through :func:`shuffled_per_class`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ddpp_cli.engine.data.registry import info
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.errors import DdppError


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split: (N, C, H, W) float32 images in [0, 1], (N,) int64 labels, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise ValueError("ImageSplit needs (N, C, H, W) images and (N,) labels")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError("ImageSplit images and labels differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def proportional_quota(counts: Sequence[int], n: int) -> list[int]:
    """Split ``n`` over classes proportionally to ``counts`` (largest remainder), ≥ 1 each if
    possible, never more than a class has."""
    total = sum(counts)
    exact = [n * c / total for c in counts]
    quota = [math.floor(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda k: (quota[k] - exact[k], k))
    for k in order[: n - sum(quota)]:
        quota[k] += 1
    present = [k for k, c in enumerate(counts) if c > 0]
    if n >= len(present):
        for k in present:
            if quota[k] == 0:
                donor = max(range(len(quota)), key=lambda j: (quota[j], -j))
                quota[donor] -= 1
                quota[k] += 1
    return quota


def stratified_subset(split: ImageSplit, n: int, seed: int) -> ImageSplit:
    """A seeded random subset of ``n`` images with class proportions kept (original order)."""
    if n < 1:
        raise DdppError(f"a subset needs at least 1 image, got {n}.")
    if n >= len(split):
        return split
    counts = class_counts(split).tolist()
    generator = make_generator(seed, "stratified_subset")
    shuffled = shuffled_per_class(split.labels, split.num_classes, generator)
    chosen = [
        members[:take]
        for members, take in zip(shuffled, proportional_quota(counts, n), strict=True)
    ]
    index = torch.cat(chosen).sort().values
    return ImageSplit(split.images[index], split.labels[index], split.class_names)


def shuffled_per_class(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """For each class in label order, the indices of its members in a seeded random order.

    The one per-class draw behind every stratified choice (holdout, subsets, coresets, the
    validation split, real-image initialisation): taking the first k of each list picks k images
    per class. The generator is advanced class by class, so the same seed gives the same picks.
    """
    shuffled = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        shuffled.append(members[torch.randperm(members.numel(), generator=generator)])
    return shuffled


def class_counts(split: ImageSplit) -> torch.Tensor:
    """Images per class, (num_classes,) int64."""
    return torch.bincount(split.labels, minlength=split.num_classes)


def normalization(name: str, train: ImageSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std): the table values, or computed from ``train`` for image folders."""
    entry = info(name)
    if entry.mean is not None and entry.std is not None:
        return entry.mean, entry.std
    channels = train.images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(train), 4096):
        part = train.images[start : start + 4096].to(torch.float64).transpose(0, 1)
        part = part.reshape(channels, -1)
        total += part.sum(dim=1)
        squares += part.square().sum(dim=1)
    count = train.images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
