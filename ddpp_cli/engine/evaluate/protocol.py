"""The evaluation protocol (docs/evaluation.md): its settings, its result, and the training and
test of one network.

A run trains a freshly initialised network on the set (cross-entropy on its hard labels, or its
label vectors' own loss, :data:`LABEL_CHOICES`; SGD momentum 0.9, weight decay 5e-4, batch 256,
DSA on) for ``epochs`` epochs, the learning rate multiplied by 0.1 after epoch ``epochs // 2``,
then makes one pass over the test split. Run ``r`` of
architecture ``a`` draws its initialisation from ``derive_seed(seed, "eval", a, r)`` and its
batches and augmentations from ``make_generator(seed, "eval", a, r, "train")``, so every run is
reproducible on its own, alone or batched.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ddpp_cli.engine import augment, models
from ddpp_cli.engine.device import derive_seed, make_generator, seeded
from ddpp_cli.engine.distilled import HARD_LABELS_TEXT
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.training import LabelVectors, predict, train_epoch

DEFAULT_LR = 0.01
LR_DECAY = 0.1
STD_KIND = "population (np.std, ddof=0)"
# How ddpp reports a set's accuracy: the set is chosen on a validation split held out from the
# training data, and each run's network is tested once, after its last epoch. MTT reported the
# best test accuracy over all its evaluation points instead (docs/reproduce.md).
SELECTION_RULE = "validation split, tested once"

SetForRun = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
# --labels: "set" trains on the set's label vectors when it has them (else its hard labels),
# "hard" always on the hard labels with cross-entropy.
LABEL_CHOICES = ("set", "hard")


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol (defaults: docs/evaluation.md); ``lr=None``: the set's lr."""

    arch: str = "convnet"
    runs: int = 5
    epochs: int = 1000
    lr: float | None = None  # None: the set's learned lr, or 0.01 when it has none
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa_strategy: str = augment.DEFAULT_STRATEGY  # "none" = --no-dsa
    seed: int = 0
    labels: str = "set"  # LABEL_CHOICES

    def __post_init__(self) -> None:
        models.check_known(self.arch)
        if self.labels not in LABEL_CHOICES:
            raise DdppError(
                f"--labels must be one of {', '.join(LABEL_CHOICES)} (got {self.labels!r})."
            )
        if self.runs < 1:
            raise DdppError(f"--runs must be at least 1 (got {self.runs}).")
        if self.epochs < 1:
            raise DdppError(f"--epochs must be at least 1 (got {self.epochs}).")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise DdppError(f"--lr must be a positive number (got {self.lr}).")
        if not (self.momentum >= 0 and self.weight_decay >= 0):
            raise DdppError("momentum and weight decay must be non-negative.")
        if self.batch_size < 1:
            raise DdppError(f"--batch-size must be at least 1 (got {self.batch_size}).")
        augment.DSA(self.dsa_strategy)  # unknown op -> DdppError


@dataclass(frozen=True)
class EvalResult:
    """Test accuracy (fractions) of every run, their mean and population std, and the protocol."""

    arch: str
    accuracies: list[float]
    mean: float
    std: float
    seconds: float
    lr: float
    protocol: dict[str, Any] = field(default_factory=dict)
    selection: str = SELECTION_RULE
    # Provenance, not protocol: the runs read from evaluation records instead of trained now,
    # and those of them made by another ddpp or torch version or on another device
    # ({run, ddpp, torch, device} each).
    reused_runs: list[int] = field(default_factory=list)
    made_elsewhere: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: arch, accuracies, mean, std, seconds, lr, protocol, selection and
        the runs' provenance (reused from records, and made elsewhere)."""
        return {
            "arch": self.arch,
            "accuracies": list(self.accuracies),
            "mean": self.mean,
            "std": self.std,
            "seconds": self.seconds,
            "lr": self.lr,
            "protocol": dict(self.protocol),
            "selection": self.selection,
            "provenance": {
                "reused_runs": list(self.reused_runs),
                "made_elsewhere": [dict(made) for made in self.made_elsewhere],
            },
        }

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> EvalResult:
        """The result :meth:`to_json` wrote (also one written before it kept its records)."""
        fields_ = {key: value for key, value in saved.items() if key != "provenance"}
        provenance = saved.get("provenance") or {}
        return cls(
            **fields_,
            reused_runs=list(provenance.get("reused_runs", [])),
            made_elsewhere=list(provenance.get("made_elsewhere", [])),
        )

    def mean_std_text(self) -> str:
        """``"72.93 ± 0.95"``: mean ± std in percent, two decimals (add the unit yourself)."""
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"


def summarize(accuracies: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of the run accuracies."""
    values = [float(a) for a in accuracies]
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def resolve_lr(config: EvalConfig, set_lr: float | None) -> tuple[float, str]:
    """The learning rate to train with and where it came from (``--lr``, the set, or default)."""
    if config.lr is not None:
        return float(config.lr), "--lr"
    if set_lr is None:
        return DEFAULT_LR, "default"
    if not (math.isfinite(set_lr) and set_lr > 0):
        raise DdppError(f"the set's learned lr is {set_lr}, which cannot train; pass --lr.")
    return float(set_lr), "set"


def chosen_vectors(config: EvalConfig, vectors: LabelVectors | None) -> LabelVectors | None:
    """The label vectors a run trains with: the set's under ``--labels set``, none (hard labels,
    cross-entropy) under ``--labels hard`` or for a set without them."""
    return vectors if config.labels == "set" else None


def labels_text(vectors: LabelVectors | None) -> str:
    """How the output names the labels that trained the networks ("hard labels", …)."""
    return HARD_LABELS_TEXT if vectors is None else vectors.text


def _check_vectors(vectors: LabelVectors | None, count: int, num_classes: int) -> None:
    if vectors is not None and tuple(vectors.vectors.shape) != (count, num_classes):
        raise DdppError(
            f"the set's label vectors are {tuple(vectors.vectors.shape)} but it holds {count} "
            f"images of {num_classes} classes; pass --labels hard to train on its classes."
        )


def _check_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
) -> None:
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DdppError(
            f"a training set needs (N, C, H, W) images and (N,) labels, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}."
        )
    if images.shape[0] == 0:
        raise DdppError("the set holds no images.")
    if test_images.ndim != 4 or tuple(test_images.shape[1:]) != tuple(images.shape[1:]):
        raise DdppError(
            f"the set's images are {tuple(images.shape[1:])} but the test images are "
            f"{tuple(test_images.shape[1:])}; they must come from the same dataset and size."
        )
    if test_labels.shape != (test_images.shape[0],) or test_images.shape[0] == 0:
        raise DdppError("the test split is empty or its labels do not match its images.")
    for name, values in (("set", labels), ("test", test_labels)):
        if int(values.min()) < 0 or int(values.max()) >= num_classes:
            raise DdppError(
                f"the {name} labels run from {int(values.min())} to {int(values.max())}, "
                f"outside the {num_classes} classes 0…{num_classes - 1}."
            )


def _run_network(
    config: EvalConfig, arch: str, run: int, images: torch.Tensor, num_classes: int
) -> torch.nn.Module:
    """Run ``run``'s fresh network for images like ``images``: the same draw alone or batched."""
    channels, height, width = (int(s) for s in images.shape[1:])
    with seeded(derive_seed(config.seed, "eval", arch, run)):
        return models.create(arch, channels, num_classes, (height, width))


def _run_generator(config: EvalConfig, arch: str, run: int) -> torch.Generator:
    """Run ``run``'s stream of batch orders and DSA draws: the same alone or batched."""
    return make_generator(config.seed, "eval", arch, run, "train")


def _run_optimizer(config: EvalConfig, parameters: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        parameters, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _decay_lr(config: EvalConfig, optimizer: torch.optim.Optimizer, lr: float, epoch: int) -> None:
    """Step schedule: ``lr`` × LR_DECAY once half of the epochs are done."""
    if epoch == config.epochs // 2:
        for group in optimizer.param_groups:
            group["lr"] = lr * LR_DECAY


def _train_and_test(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    arch: str,
    num_classes: int,
    lr: float,
    config: EvalConfig,
    run: int,
    device: torch.device | str,
    on_epoch: Callable[[int, int], None] | None,
    vectors: LabelVectors | None = None,
) -> tuple[float, bool]:
    """:func:`train_and_test`, also saying whether training diverged (and stopped early)."""
    device = torch.device(device)
    model = _run_network(config, arch, run, images, num_classes).to(device)
    generator = _run_generator(config, arch, run)
    dsa = augment.DSA(config.dsa_strategy)
    optimizer = _run_optimizer(config, model.parameters(), lr)
    x, y = images.to(device), labels.to(device)
    train = train_epoch  # hard labels: cross-entropy, the call it always was
    if vectors is not None:
        train = functools.partial(train_epoch, vectors=vectors.to(device))
    diverged = False
    for epoch in range(1, config.epochs + 1):
        loss = train(
            model, x, y, optimizer, batch_size=config.batch_size, dsa=dsa, generator=generator
        )
        if on_epoch is not None:
            on_epoch(epoch, config.epochs)
        if not math.isfinite(loss):
            diverged = True  # further epochs cannot recover; test what we have
            break
        _decay_lr(config, optimizer, lr, epoch)
    return measure_accuracy(model, test_images.to(device), test_labels.to(device)), diverged


def measure_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One pass over the test split in evaluation mode: correct predictions / test images."""
    correct = int((predict(model, images) == labels).sum())
    return correct / int(labels.shape[0])


def train_and_test(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    arch: str,
    num_classes: int,
    lr: float,
    config: EvalConfig,
    run: int,
    device: torch.device | str,
    on_epoch: Callable[[int, int], None] | None = None,
    vectors: LabelVectors | None = None,
) -> float:
    """Train one fresh ``arch`` network on ``images`` (run ``run``), return its test accuracy.

    SGD with ``config.momentum``/``config.weight_decay`` at ``lr``, ×0.1 after epoch
    ``config.epochs // 2``; DSA from ``config.dsa_strategy``; evaluation mode for the test pass.
    Cross-entropy on ``labels``, or the loss of ``vectors`` (the images' label vectors) as
    :func:`chosen_vectors` picks them by ``config.labels``.
    A run whose loss becomes non-finite stops training and is tested as it is.
    """
    vectors = chosen_vectors(config, vectors)
    _check_vectors(vectors, int(images.shape[0]), num_classes)
    acc, _ = _train_and_test(
        images, labels, test_images, test_labels, arch=arch, num_classes=num_classes, lr=lr,
        config=config, run=run, device=device, on_epoch=on_epoch, vectors=vectors,
    )  # fmt: skip
    return acc


def _loss_text(vectors: LabelVectors | None) -> str:
    if vectors is None:
        return "cross-entropy (hard labels)"
    if vectors.loss == "mse":
        return "0.5 * mean squared error to the label vectors"
    return f"soft cross-entropy to softmax(label vectors / {vectors.temperature:g})"


def protocol_record(
    config: EvalConfig, lr: float, lr_source: str, vectors: LabelVectors | None = None
) -> dict[str, Any]:
    """The protocol as recorded in every result (and printed by ``--json``); ``vectors``: the
    label vectors the networks trained with (None: hard labels)."""
    return {
        **asdict(config),
        "lr": lr,
        "lr_source": lr_source,
        "lr_schedule": f"x{LR_DECAY} after epoch {config.epochs // 2}",
        "optimizer": "SGD",
        "label_text": labels_text(vectors),
        "loss": _loss_text(vectors),
        "std": STD_KIND,
        "accuracy": "fraction of the test split classified correctly, after the last epoch",
    }
