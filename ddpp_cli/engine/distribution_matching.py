"""Distribution matching (DM: Zhao & Bilen, "Dataset Condensation with Distribution Matching",
WACV 2023).

The synthetic set is learned so that, under many randomly initialised networks that are never
trained, the mean embedding of each class's synthetic images matches that of its real images:

    L = Σ_c ‖ mean_i ψ(A_c(r_i)) − mean_j ψ(A_c(s_j)) ‖²

ψ is the flattened trunk output of the network (the input of its classifier: 2048-d for
ConvNet-3 at 32 px and at 28 px, whose first convolution pads to 32), A_c the class's Siamese
DSA transform (the same draw for the real and synthetic images of class c; see
``DSA.siamese``), the real side a constant. L is a sum of squares, not a mean: the reference's
lr_img 1.0 relies on that. One fresh frozen network per iteration, one SGD step on S.

Defaults and their source (VICO-UoE/DatasetCondensation ``main_DM.py``): 20000 iterations,
lr_img 1.0 (README: 1 for IPC 1/10/50, 10 for IPC ≥ 100), SGD momentum 0.5, batch_real 256,
init from real images, DSA ``color_crop_cutout_flip_scale_rotate``, ConvNet-3. For BatchNorm
networks the reference sends every class's real images through ψ in one forward and every
class's synthetic images in a second one (batch statistics over all classes of one side, never
mixing real and synthetic): :func:`distribution_matching_loss` does so whenever the network has
BatchNorm layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddpp_cli.engine import models
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.device import derive_seed, seeded
from ddpp_cli.engine.gradient_matching import class_slices, draw_real, optimized_tensors


def embedding(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """ψ(images): the flattened input of ``model``'s last Linear layer, differentiable."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[-1].flatten(1)


def frozen_network(
    arch: str,
    channels: int,
    num_classes: int,
    image_size: int | tuple[int, int],
    seed: int,
    iteration: int,
) -> nn.Module:
    """The fresh random network of iteration ``iteration``: parameters frozen, training mode
    (as the reference: BatchNorm uses batch statistics), seeded from (seed, iteration)."""
    with seeded(derive_seed(seed, "dm-network", arch, iteration)):
        model = models.create(arch, channels, num_classes, image_size)
    model.train()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def distribution_matching_loss(
    model: nn.Module, real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Σ_c ‖mean ψ(real[c]) − mean ψ(syn[c])‖² over the (already Siamese-augmented) per-class
    batches; the real embeddings are constants."""
    if len(real) != len(syn) or not real:
        raise ValueError("real and syn must hold one batch per class, the same classes")
    if models.uses_batchnorm(model):
        # As main_DM.py's BN branch: one forward of all classes' real images, another of all
        # classes' synthetic images (BN statistics over each side's joint batch).
        real_pieces = embedding(model, torch.cat([r.detach() for r in real]))
        real_pieces = real_pieces.detach().split([len(b) for b in real])
        syn_pieces = embedding(model, torch.cat(list(syn))).split([len(b) for b in syn])
        real_means = [p.mean(dim=0) for p in real_pieces]
        syn_means = [p.mean(dim=0) for p in syn_pieces]
    else:
        with torch.no_grad():
            real_means = [embedding(model, r).mean(dim=0) for r in real]
        syn_means = [embedding(model, s).mean(dim=0) for s in syn]
    return torch.stack(
        [((r - s) ** 2).sum() for r, s in zip(real_means, syn_means, strict=True)]
    ).sum()


def distribution_matching_iteration(
    network: nn.Module,
    syn_images: torch.Tensor,
    syn_labels: torch.Tensor,
    image_optimizer: torch.optim.Optimizer,
    real_by_class: Sequence[torch.Tensor],
    *,
    batch_real: int = 256,
    dsa: DSA | None = None,
    generator: torch.Generator,
) -> float:
    """One DM iteration on a fresh frozen ``network`` (:func:`frozen_network`): draw
    ``batch_real`` real images per class, apply each class's Siamese DSA draw to its real and
    synthetic images, one ``image_optimizer`` step on :func:`distribution_matching_loss`.
    Returns the loss per class (the reference's ``loss_avg``)."""
    dsa = DSA() if dsa is None else dsa
    slices = class_slices(syn_labels, len(real_by_class))
    real = [draw_real(pool, batch_real, generator) for pool in real_by_class]
    syn = [syn_images[index] for index in slices]
    if dsa.enabled:
        pairs = [dsa.siamese([r, s], generator) for r, s in zip(real, syn, strict=True)]
        real, syn = [p[0] for p in pairs], [p[1] for p in pairs]
    loss = distribution_matching_loss(network, real, syn)
    image_optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=optimized_tensors(image_optimizer))
    image_optimizer.step()
    return float(loss.detach()) / len(real_by_class)
