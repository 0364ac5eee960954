"""Model selection (docs/distill.md): a validation split held out from the training data,
evaluation of the current images on it (or, with ``--selection best-test``, on the test split),
and the one final test of the chosen set on the test split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data
from ddpp_cli.engine.device import derive_seed
from ddpp_cli.engine.distill.config import DistillConfig
from ddpp_cli.engine.distill.events import (
    TestFinished,
    TestStarted,
    ValidationStarted,
)
from ddpp_cli.engine.distilled import load as load_set
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig, EvalResult, evaluate_images, set_vectors
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.training import LabelVectors

MAX_VAL_SIZE = 5000


def validation_size(config: DistillConfig, train_size: int, num_classes: int) -> int:
    """``val_size`` as given, else 10 % of the training split (at most 5000, at least one per
    class), or 0 when validation is off."""
    if config.val_size is not None:
        return config.val_size
    wanted = 0 if config.eval_every == 0 else min(MAX_VAL_SIZE, round(0.1 * train_size))
    return max(wanted, num_classes if wanted else 0)


def check_ipc(ipc: int, counts: list[int], class_names: Sequence[str], held: int) -> None:
    """DdppError when ``ipc`` is more than the smallest class keeps (``counts``: its training
    images per class once ``held`` images are held out for validation)."""
    smallest = min(counts)
    if ipc > smallest:
        name = class_names[counts.index(smallest)]
        where = f" after holding out {held} for validation" if held else ""
        raise DdppError(
            f"--ipc {ipc} is more than class '{name}' has ({smallest} training images{where}); "
            f"use --ipc {smallest} or less."
        )


def split_validation(
    labels: torch.Tensor, num_classes: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, validation) indices, validation of ``size`` images, both sorted."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    quota = data.proportional_quota(counts, size) if size > 0 else [0] * num_classes
    train, val = [], []
    for order, take in zip(
        data.shuffled_per_class(labels, num_classes, generator), quota, strict=True
    ):
        val.append(order[:take])
        train.append(order[take:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def eval_config(config: DistillConfig, runs: int, purpose: str) -> EvalConfig:
    """The protocol of validation and test; the same seeds at every validation point."""
    return EvalConfig(
        arch=config.arch, runs=runs, epochs=config.eval_epochs, dsa_strategy=config.dsa_strategy,
        seed=derive_seed(config.seed, purpose) % 2**31,
    )  # fmt: skip


class Validation:
    """Evaluates sets on the held-out validation images (with ``--selection best-test``: on the
    test split, the networks seeded by the rule's own purpose)."""

    def __init__(
        self,
        config: DistillConfig,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        device: torch.device,
        emit: OnEvent,
        world: World | None = None,
        purpose: str = "val_eval",
    ) -> None:
        self.config = config
        self.purpose = purpose
        self.last: EvalResult | None = None  # the last evaluation's whole result
        self.world = world or World()  # under torchrun the ranks split the networks
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.device = device
        self.emit = emit

    def due(self, iteration: int) -> bool:
        """Whether to validate after ``iteration`` (every ``eval_every`` and at the end)."""
        c = self.config
        return c.eval_every > 0 and (iteration % c.eval_every == 0 or iteration == c.iterations)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        lr: float | None,
        iteration: int,
        vectors: LabelVectors | None = None,
    ) -> tuple[float, float]:
        """Mean and std accuracy of networks trained on ``images`` with step size ``lr`` (None:
        the evaluation's default, as for a set without a learned lr) and label ``vectors`` (None:
        the hard labels); the whole result is kept as :attr:`last`."""
        c = self.config
        self.emit(ValidationStarted(iteration, c.eval_runs, c.eval_epochs))
        self.last = evaluate_images(
            images, labels, self.images, self.labels, num_classes=self.num_classes,
            config=eval_config(c, c.eval_runs, self.purpose), lr=lr, device=self.device,
            on_event=self.emit, world=self.world, vectors=vectors,
        )  # fmt: skip
        return self.last.mean, self.last.std


def final_test(
    config: DistillConfig,
    tested: Path,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    device: torch.device,
    emit: OnEvent,
    previous: dict[str, Any] | None,
    world: World | None = None,
) -> EvalResult:
    """The test accuracy of the set ``tested``; the result of ``previous`` (an earlier
    ``summary.json`` of the same final state and protocol) when there is one, so that the
    test split is used once. Under torchrun the ranks of ``world`` split the networks."""
    old = (previous or {}).get("test")
    protocol = old.get("protocol", {}) if isinstance(old, dict) else {}
    if protocol.get("runs") == config.test_runs and protocol.get("epochs") == config.eval_epochs:
        return EvalResult.from_json(old)
    chosen = load_set(tested)
    emit(TestStarted(tested, config.test_runs, config.eval_epochs))
    result = evaluate_images(
        chosen.images, chosen.labels, test_images, test_labels, num_classes=num_classes,
        lr=chosen.lr, device=device, config=eval_config(config, config.test_runs, "test_eval"),
        on_event=emit, world=world, vectors=set_vectors(chosen),
    )  # fmt: skip
    emit(TestFinished(tested, result))
    return result
