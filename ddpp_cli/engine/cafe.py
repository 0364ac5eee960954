"""CAFE: "Aligning Features Matters" (Wang et al., CVPR 2022), as pure functions.

Loss of one image step (K classes; μ_c = mean over the class-c samples with the feature shape
kept; e = the flattened last feature map; M = the K×D matrix of synthetic class means of e):

    L = Σ_l w_l Σ_c ‖μ_c^R(f_l) − μ_c^S(f_l)‖²              (layer-wise alignment)
      + w_e Σ_c ‖μ_c^R(e) − μ_c^S(e)‖²                       (embedding alignment)
      + w_d Σ_{i ∈ R} CE(e_i Mᵀ, y_i)                        (discrimination, summed)

The logits of the discrimination term are raw dot products of each real embedding with the
synthetic class means, so its gradient reaches S through M. The reference also adds the mean CE
of the network on the real images, which has no gradient w.r.t. S and is left out here.

Defaults and their source (kaiwang960112/CAFE ``distill.py`` and ``networks.py``):

- layers of ConvNet-3 (``ConvNet.forward`` returns ``[f5, f4, f3, f2, f1]``): f1 = block-1 ReLU
  output (32×32), f2 = block-2 ReLU (16×16), f3 = block-3 ReLU (8×8), f4 = after the last pool
  (4×4), f5 = flattened f4 = e; weights ``--fourth_weight`` 0.1 on f1, ``--third_weight`` 0.1
  on f2, ``--second_weight`` 1.0 on f3, ``--first_weight`` 1.0 on f4; embedding weight 1;
  ``--inner_weight`` 0.01 on the discrimination term. f4 and e are the same tensor, so the last
  layer is counted twice (weights 1 + 1), as in the reference.
- each alignment term is ``nn.MSELoss(reduction='sum')`` of the class means.
- loop control: ``--lambda_1`` 0.04 ends an iteration's outer loop once the monitor accuracy has
  varied by less than λ1 over the last 10 image steps; ``--lambda_2`` 0.03 ends an inner
  (network training) phase once it has varied by more than λ2 over the last 10 epochs. The
  monitor accuracy is measured on 128 fresh real images per class.
- 2000 iterations, lr_img 0.1 halved at 1200, 1600, 1800, SGD momentum 0.5, lr_net 0.01,
  batch_real 256, init noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddpp_cli.engine.augment import DSA, NONE
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.gradient_matching import class_slices, draw_real, optimized_tensors
from ddpp_cli.engine.models import ConvNet
from ddpp_cli.engine.training import train_epoch

WINDOW = 10  # the reference's accuracy window length
LR_MILESTONES = (1200, 1600, 1800)  # lr_img × 0.5 at each (adjust_learning_rate)


@dataclass(frozen=True)
class CafeWeights:
    """Weights of the loss terms (reference defaults)."""

    layers: tuple[float, ...] = (0.1, 0.1, 1.0, 1.0)  # f1, f2, f3, f4
    embedding: float = 1.0
    discrimination: float = 0.01


@dataclass(frozen=True)
class CafeLoss:
    """The loss and its parts (the parts are for logging)."""

    total: torch.Tensor
    layers: torch.Tensor
    embedding: torch.Tensor
    discrimination: torch.Tensor


def convnet_layer_features(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """[f1, f2, f3, f4] of a ddpp ConvNet as CAFE slices it (``features[:-9]``, ``[-9:-5]``,
    ``[-5:-1]``, ``[-1:]``): for ConvNet-3 the ReLU outputs of the three blocks and the map
    after the last pool."""
    if not isinstance(model, ConvNet) or len(model.features) < 12:
        raise DdppError(
            "CAFE's layer features are defined for ConvNet (with a norm layer and depth 3 or "
            "more); use --arch convnet."
        )
    layers = model.features
    f1 = layers[:-9](images)
    f2 = layers[-9:-5](f1)
    f3 = layers[-5:-1](f2)
    f4 = layers[-1:](f3)
    return [f1, f2, f3, f4]


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, *feature_shape)``: the mean feature of each class; DdppError for an empty class."""
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()) or labels.shape[0] != features.shape[0]:
        raise DdppError("CAFE needs at least one real and one synthetic image of every class.")
    flat = features.reshape(features.shape[0], -1)
    sums = torch.zeros(num_classes, flat.shape[1], dtype=flat.dtype, device=flat.device)
    sums = sums.index_add(0, labels, flat)
    means = sums / counts.to(flat.dtype).unsqueeze(1)
    return means.reshape(num_classes, *features.shape[1:])


def cafe_loss(
    real_layers: Sequence[torch.Tensor],
    real_labels: torch.Tensor,
    syn_layers: Sequence[torch.Tensor],
    syn_labels: torch.Tensor,
    num_classes: int,
    weights: CafeWeights = CafeWeights(),
) -> CafeLoss:
    """CAFE's loss from the layer features ``[f1, …, f_L]`` of the real and synthetic batches
    (all classes together, any order); e is the flattened last layer."""
    if not (len(real_layers) == len(syn_layers) == len(weights.layers)):
        raise ValueError(f"expected {len(weights.layers)} feature layers on both sides")
    layer_terms = []
    for w, real, syn in zip(weights.layers, real_layers, syn_layers, strict=True):
        gap = class_means(real, real_labels, num_classes) - class_means(
            syn, syn_labels, num_classes
        )
        layer_terms.append(w * (gap**2).sum())
    layers = torch.stack(layer_terms).sum()
    real_e = real_layers[-1].flatten(1)
    syn_means = class_means(syn_layers[-1].flatten(1), syn_labels, num_classes)  # M, (K, D)
    real_means = class_means(real_e, real_labels, num_classes)
    embedding = weights.embedding * ((real_means - syn_means) ** 2).sum()
    logits = real_e @ syn_means.t()
    discrimination = weights.discrimination * F.cross_entropy(logits, real_labels, reduction="sum")
    return CafeLoss(layers + embedding + discrimination, layers, embedding, discrimination)


def image_lr(lr_img: float, iteration: int) -> float:
    """lr_img halved at each of :data:`LR_MILESTONES` reached (reference adjust_learning_rate)."""
    return lr_img * 0.5 ** sum(iteration >= m for m in LR_MILESTONES)


def monitor_value(previous: float, class_accuracies: Sequence[float]) -> float:
    """The reference's running monitor accuracy: (previous + Σ_c acc_c) / K.

    The reference does not reset ``acc_test`` between appends, so each window value carries
    1/K of the one before; ``previous`` is 0 at the start of a loop (it is reset when a loop
    ends). With ``previous = 0`` this is the plain mean class accuracy.
    """
    if not class_accuracies:
        raise ValueError("no class accuracies")
    return (previous + sum(class_accuracies)) / len(class_accuracies)


def _spread(window: Sequence[float], size: int) -> float | None:
    if len(window) < size:
        return None
    last = list(window)[-size:]
    return max(last) - min(last)


def outer_loop_done(window: Sequence[float], lambda_1: float = 0.04, size: int = WINDOW) -> bool:
    """After an image step: stop the iteration once the last ``size`` monitor values vary by
    less than λ1 (a full window that does not qualify just drops its oldest value)."""
    spread = _spread(window, size)
    return spread is not None and spread < lambda_1


def inner_loop_done(window: Sequence[float], lambda_2: float = 0.03, size: int = WINDOW) -> bool:
    """After a network-training epoch: stop the inner phase once the last ``size`` monitor
    values vary by more than λ2."""
    spread = _spread(window, size)
    return spread is not None and spread > lambda_2


# ----------------------------------------------------------------------------- one iteration


@dataclass(frozen=True)
class CafeSettings:
    """Settings of one CAFE iteration (reference ``distill.py`` defaults, plus [ddpp] caps).

    The reference loops have no upper bound: a network whose monitor accuracy stops moving keeps
    the inner phase going for ever. ``max_image_steps`` and ``max_inner_epochs`` bound them
    ([ddpp] choice); the result says when a cap ended a loop.
    """

    batch_real: int = 256
    batch_train: int = 256
    lr_net: float = 0.01
    monitor_per_class: int = 128
    lambda_1: float = 0.04
    lambda_2: float = 0.03
    window: int = WINDOW
    weights: CafeWeights = CafeWeights()
    dsa_strategy: str = NONE  # CAFE: none; CAFE+DSA: the DSA strategy
    max_image_steps: int = 100
    max_inner_epochs: int = 100

    def __post_init__(self) -> None:
        if min(self.batch_real, self.batch_train, self.monitor_per_class, self.window) < 1:
            raise DdppError("CAFE's batch sizes, monitor size and window must be at least 1.")
        if self.max_image_steps < 1 or self.max_inner_epochs < 1:
            raise DdppError("CAFE's loop caps must be at least 1.")
        DSA(self.dsa_strategy)  # unknown op -> DdppError


@dataclass(frozen=True)
class CafeIteration:
    """What one iteration did: mean loss per image step, steps, epochs, caps reached."""

    loss: float
    image_steps: int
    inner_epochs: int
    capped: bool


def monitor_accuracies(
    network: nn.Module,
    real_by_class: Sequence[torch.Tensor],
    count: int,
    generator: torch.Generator,
) -> list[float]:
    """Accuracy of ``network`` on ``count`` fresh real images of each class."""
    accuracies = []
    with torch.no_grad():
        for label, pool in enumerate(real_by_class):
            predicted = network(draw_real(pool, count, generator)).argmax(dim=1)
            accuracies.append(float((predicted == label).float().mean()))
    return accuracies


def _watch(
    network: nn.Module,
    real_by_class: Sequence[torch.Tensor],
    settings: CafeSettings,
    generator: torch.Generator,
    previous: float,
    window: list[float],
) -> float:
    """The next monitor value (:func:`monitor_value` of fresh accuracies), appended to
    ``window``."""
    accuracies = monitor_accuracies(network, real_by_class, settings.monitor_per_class, generator)
    value = monitor_value(previous, accuracies)
    window.append(value)
    return value


def cafe_iteration(
    network: nn.Module,
    syn_images: torch.Tensor,
    syn_labels: torch.Tensor,
    image_optimizer: torch.optim.Optimizer,
    real_by_class: Sequence[torch.Tensor],
    settings: CafeSettings,
    generator: torch.Generator,
) -> CafeIteration:
    """One CAFE iteration on a freshly initialised ConvNet ``network`` (docs/methods.md, CAFE).

    Repeat: an image step on :func:`cafe_loss` (all classes in one forward per side, each class
    under its Siamese DSA draw with CAFE+DSA); append the monitor value; stop when
    :func:`outer_loop_done`; else train the network epoch by epoch on a detached copy of S
    (per-sample DSA with CAFE+DSA) until :func:`inner_loop_done`.
    """
    num_classes = len(real_by_class)
    slices = class_slices(syn_labels, num_classes)
    dsa = DSA(settings.dsa_strategy)
    net_optimizer = torch.optim.SGD(network.parameters(), lr=settings.lr_net)
    network.train()
    window: list[float] = []
    monitor, total, steps, epochs, capped = 0.0, 0.0, 0, 0, False
    while True:
        real = [draw_real(pool, settings.batch_real, generator) for pool in real_by_class]
        syn = [syn_images[index] for index in slices]
        if dsa.enabled:
            pairs = [dsa.siamese([r, s], generator) for r, s in zip(real, syn, strict=True)]
            real, syn = [p[0] for p in pairs], [p[1] for p in pairs]
        real_labels = torch.cat([torch.full((len(r),), c) for c, r in enumerate(real)])
        with torch.no_grad():
            real_layers = convnet_layer_features(network, torch.cat(real))
        syn_layers = convnet_layer_features(network, torch.cat(syn))
        syn_order = syn_labels[torch.cat(slices)]
        real_labels = real_labels.to(syn_images.device)
        parts = cafe_loss(
            real_layers, real_labels, syn_layers, syn_order, num_classes, settings.weights
        )
        loss = parts.total
        image_optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=optimized_tensors(image_optimizer))
        image_optimizer.step()
        total += float(loss.detach())
        steps += 1
        monitor = _watch(network, real_by_class, settings, generator, monitor, window)
        if outer_loop_done(window, settings.lambda_1, settings.window):
            break
        if steps >= settings.max_image_steps:
            capped = True
            break
        images = syn_images.detach().clone()
        inner_window: list[float] = []
        inner_monitor = 0.0
        for epoch in range(1, settings.max_inner_epochs + 1):
            train_epoch(
                network, images, syn_labels, net_optimizer,
                batch_size=settings.batch_train, dsa=dsa, generator=generator,
            )  # fmt: skip
            epochs += 1
            inner_monitor = _watch(
                network, real_by_class, settings, generator, inner_monitor, inner_window
            )
            if inner_loop_done(inner_window, settings.lambda_2, settings.window):
                break
            if epoch == settings.max_inner_epochs:
                capped = True
    return CafeIteration(total / steps, steps, epochs, capped)
