"""The forgetting coreset: the ``ipc`` most forgotten examples of each class (Toneva et al.,
"An Empirical Study of Example Forgetting during Deep Neural Network Learning", ICLR 2019), as
used for the DC benchmark's coreset rows, counted while training a network on the pool.

Three pieces, each usable alone:

1. :func:`record_presentations` trains a network on the full training split and records, for
   every example, whether it was classified correctly at each presentation: its minibatch's
   forward pass, before that minibatch's update (Toneva's ``run_mnist.py``/``run_cifar.py``).
   With every example presented once per epoch the record is an ``(epochs, N)`` bool tensor.
2. :func:`forgetting_counts` counts forgetting events per example: correct at one presentation,
   wrong at the next (1 → 0). An example never classified correctly at any presentation gets
   the number of presentations (= epochs), as Toneva's ``order_examples_by_forgetting.py`` does
   ("unlearned examples are forgotten the most"); DeepCore leaves them at 0, which would rank
   them as the most memorable, so we follow Toneva.
3. :func:`select_most_forgotten` keeps the ``ipc`` most forgotten examples of each class. The
   references sort with numpy's unstable argsort, so ties are arbitrary; here ties are broken by
   a seeded permutation followed by a stable sort, so a seed fixes the selection.

Training settings (:class:`ForgettingConfig`) are a [ddpp] choice, documented in
docs/methods.md: Toneva trains 200 epochs (MNIST: SGD lr 0.01, momentum 0.5, batch 64, no
augmentation; CIFAR: ResNet18, lr 0.1, batch 128, augmentation) and sums 5 seeds. What the DC
paper used could not be confirmed, so ddpp trains ConvNet (the benchmark network) with the
expert recipe of ``ddpp buffer`` (SGD lr 0.01, momentum 0, weight decay 0, batch 256),
without augmentation (correctness is recorded on the images as they are), for 20 epochs by
default: a CPU budget, far below Toneva's 200.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddpp_cli.engine import data, models
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.coresets.pool import CoresetRequest
from ddpp_cli.engine.coresets.registry import CoresetInfo
from ddpp_cli.engine.device import derive_seed, make_generator, seeded
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.training import min_batch_size, minibatches

# How never-learned examples rank: "toneva" counts them forgotten at every presentation (the
# most forgotten of all, Toneva's order_examples_by_forgetting.py); "deepcore" gives them 0
# (DeepCore's forgetting.py), so the picks are examples that were learned and then forgotten.
UNLEARNED = ("toneva", "deepcore")
# Forgetting's training epochs by default: Toneva et al.'s 200 (DeepCore trains 40). A GPU
# setting; on a CPU, lower it and count on a --train-subset (docs/methods.md gives a budget).
FORGETTING_EPOCHS = 200


@dataclass(frozen=True)
class ForgettingConfig:
    """How the presentation record is made (defaults: ``ddpp buffer``'s expert recipe) and how
    never-learned examples rank (``unlearned``, one of :data:`UNLEARNED`)."""

    arch: str = "convnet"
    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    dsa_strategy: str = "none"
    seed: int = 0
    unlearned: str = "toneva"

    def __post_init__(self) -> None:
        models.check_known(self.arch)
        if self.unlearned not in UNLEARNED:
            raise DdppError(
                f"--forgetting-unlearned must be one of: {', '.join(UNLEARNED)} "
                f"(got '{self.unlearned}')."
            )
        if self.epochs < 1:
            raise DdppError(f"forgetting needs at least 1 epoch (got {self.epochs}).")
        if self.batch_size < 1:
            raise DdppError(f"the batch size must be at least 1 (got {self.batch_size}).")
        if not self.lr > 0:
            raise DdppError(f"the learning rate must be positive (got {self.lr}).")
        DSA(self.dsa_strategy)  # unknown op -> DdppError


@dataclass(frozen=True)
class ForgettingEpoch:
    """Progress event: one training epoch of the forgetting run finished."""

    epoch: int  # 1-based
    epochs: int
    loss: float
    accuracy: float  # fraction correct at the presentations of this epoch


def forgetting_counts(correct: torch.Tensor) -> torch.Tensor:
    """Forgetting events per example from a ``(presentations, N)`` record of correctness.

    An event is a 1 → 0 transition between consecutive presentations; an example that is never
    correct gets the number of presentations (Toneva). Returns ``(N,)`` int64.
    """
    if correct.ndim != 2 or correct.shape[0] < 1:
        raise ValueError("the record must be (presentations, N) with at least one presentation")
    record = correct.bool()
    events = (record[:-1] & ~record[1:]).sum(dim=0)
    never_learned = ~record.any(dim=0)
    return torch.where(never_learned, torch.full_like(events, record.shape[0]), events).long()


def select_most_forgotten(
    counts: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int, seed: int
) -> torch.Tensor:
    """Indices of the ``ipc`` examples of each class with the most forgetting events, class-major.

    Within a class the examples are first put in a seeded random order, then stably sorted by
    descending count, so ties are broken at random but reproducibly.
    """
    if counts.shape != labels.shape or counts.ndim != 1:
        raise ValueError("counts and labels must be (N,) tensors of the same length")
    if ipc < 1:
        raise DdppError(f"--ipc must be at least 1 (got {ipc}).")
    generator = make_generator(seed, "forgetting_ties")
    chosen = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        if len(members) < ipc:
            raise DdppError(
                f"--ipc {ipc} is more than class {label} has ({len(members)} images); use "
                f"--ipc {len(members)} or less."
            )
        members = members[torch.randperm(len(members), generator=generator)]
        order = torch.sort(counts[members], descending=True, stable=True).indices
        chosen.append(members[order[:ipc]])
    return torch.cat(chosen)


def record_presentations(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: ForgettingConfig,
    *,
    on_event: OnEvent | None = None,
) -> torch.Tensor:
    """Train ``model`` on ``images`` for ``config.epochs`` epochs of shuffled minibatches,
    recording whether each example is classified correctly at its forward pass before the update.

    ``images``/``labels`` live on the model's device. Returns an ``(epochs, N)`` bool tensor
    on the CPU: row e, column i is example i's correctness at its presentation in epoch e.
    """
    generator = make_generator(config.seed, "forgetting_batches")
    dsa = DSA(config.dsa_strategy)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    record = torch.zeros(config.epochs, len(images), dtype=torch.bool)
    model.train()
    for epoch in range(config.epochs):
        total = 0.0
        for index in minibatches(len(images), config.batch_size, generator, min_batch_size(model)):
            batch = images[index.to(images.device)]
            if dsa.enabled:
                batch = dsa(batch, generator)
            target = labels[index.to(labels.device)]
            logits = model(batch)
            record[epoch, index] = (logits.argmax(dim=1) == target).cpu()
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        if not total == total or total == float("inf"):
            raise DdppError(
                f"the forgetting run diverged at epoch {epoch + 1} (loss not finite); lower the "
                "learning rate."
            )
        if on_event is not None:
            on_event(
                ForgettingEpoch(
                    epoch + 1,
                    config.epochs,
                    total / len(images),
                    float(record[epoch].float().mean()),
                )
            )
    return record


def forgetting_network(train: data.ImageSplit, config: ForgettingConfig) -> nn.Module:
    """The freshly initialised network of the forgetting run (seeded from ``config.seed``)."""
    channels, height, width = (int(s) for s in train.images.shape[1:])
    with seeded(derive_seed(config.seed, "forgetting", config.arch)):
        return models.create(config.arch, channels, train.num_classes, (height, width))


def forgetting_coreset(
    train: data.ImageSplit,
    ipc: int,
    config: ForgettingConfig,
    *,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train on ``train`` (model-input space), count forgetting events, keep the ``ipc`` most
    forgotten per class (never-learned ones ranked as ``config.unlearned`` says). Returns
    (indices class-major, Toneva's counts of every training example)."""
    # Check --ipc before the (long) training run; the selection would refuse it only after.
    select_most_forgotten(
        torch.zeros_like(train.labels), train.labels, train.num_classes, ipc, config.seed
    )
    device = torch.device(device)
    model = forgetting_network(train, config).to(device)
    record = record_presentations(
        model, train.images.to(device), train.labels.to(device), config, on_event=on_event
    )
    counts = forgetting_counts(record)
    indices = select_most_forgotten(
        ranking_counts(counts, config), train.labels, train.num_classes, ipc, config.seed
    )
    return indices, counts


def ranking_counts(counts: torch.Tensor, config: ForgettingConfig) -> torch.Tensor:
    """The counts the selection ranks by: Toneva's (never-learned = ``config.epochs``, more than
    a learned example can reach), or with never-learned examples at 0 (``unlearned="deepcore"``)."""
    if config.unlearned == "toneva":
        return counts
    return torch.where(counts == config.epochs, torch.zeros_like(counts), counts)


def forgetting_record(
    config: ForgettingConfig, counts: torch.Tensor, indices: torch.Tensor
) -> dict[str, Any]:
    """The ``forgetting`` entry of a coreset's settings: the training settings, where the counts
    came from, and the counts of the pool and of the chosen examples."""
    return {
        **asdict(config),
        # Experts of `ddpp buffer` keep per-epoch snapshots, not each example's correctness at
        # each presentation, so the counts always come from a run of their own.
        "counts_source": "trained on the pool",
        "pool_size": int(counts.numel()),
        "never_learned": int((counts == config.epochs).sum()),
        "max_count": int(counts.max()),
        "selected_counts": counts[indices].tolist(),
    }


def select_forgetting(
    request: CoresetRequest, run: int, device: torch.device | str, emit: OnEvent
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The most forgotten examples, counted while training ``request.arch`` on the pool for
    ``forgetting_epochs`` (its epochs reported as :class:`ForgettingEpoch`)."""
    config = ForgettingConfig(
        arch=request.arch, epochs=request.option("forgetting_epochs"), seed=request.seed,
        unlearned=request.option("forgetting_unlearned"),
    )  # fmt: skip
    found, counts = forgetting_coreset(
        request.train, request.ipc, config, device=device, on_event=emit
    )
    return found, {"forgetting": forgetting_record(config, counts, found)}


FORGETTING = CoresetInfo(
    "forgetting",
    "Forgetting",
    "forgetting",
    select_forgetting,
    options=("forgetting_epochs", "forgetting_unlearned"),
    trained=True,
    budget_option="forgetting_epochs",
)
# The same counts, never-learned examples ranked last (DeepCore's convention; docs/methods.md):
# a row of `ddpp run --compare`, and `--baseline forgetting --forgetting-unlearned deepcore`.
FORGETTING_DEEPCORE = CoresetInfo(
    "forgetting-deepcore",
    "Forgetting (DeepCore)",
    "forgetting-deepcore",
    select_forgetting,
    options=FORGETTING.options,
    trained=True,
    budget_option="forgetting_epochs",
    base="forgetting",
    preset=(("forgetting_unlearned", "deepcore"),),
)
