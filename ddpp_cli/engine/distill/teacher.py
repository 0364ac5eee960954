"""DATM's teacher labels: the real images the experts classify correctly, and their logits.

DATM (NUS-HPC-AI-Lab/DATM, ``distill/DATM.py``) starts ``--labels teacher|learned`` runs from
real images an expert classifies correctly (lines 185-236: the first expert's final snapshot,
the next expert's once a class runs out) and labels each with the logits of the experts'
final snapshots averaged over those that classify it correctly (lines 268-307). docs/distill.md,
Labels (DATM).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.functional import ParamLayout, functional_forward

BATCH = 256  # images per forward (DATM's batch_size in its selection)


def logits_of(
    model: nn.Module, layout: ParamLayout, theta: torch.Tensor, images: torch.Tensor
) -> torch.Tensor:
    """f(images; θ) in batches of :data:`BATCH`, without a graph."""
    with torch.no_grad():
        parts = [
            functional_forward(model, layout, theta, images[start : start + BATCH])
            for start in range(0, len(images), BATCH)
        ]
    return torch.cat(parts) if parts else images.new_zeros((0,))


def select_correct(
    model: nn.Module,
    layout: ParamLayout,
    thetas: Sequence[torch.Tensor],
    candidates: Sequence[torch.Tensor],
    pool: torch.Tensor,
    ipc: int,
    class_names: Sequence[str],
) -> torch.Tensor:
    """Per class c, the first ``ipc`` of ``candidates[c]`` (indices into ``pool``, in their
    order) that ``thetas[0]`` classifies as c; where fewer are, the next expert's picks fill up
    (DATM's order). DdppError when no expert gives ``ipc`` correct images of a class."""
    chosen: list[torch.Tensor] = []
    for label, members in enumerate(candidates):
        picked: list[int] = []
        for theta in thetas:
            taken = set(picked)
            rest = [i for i in members.tolist() if i not in taken]
            if not rest:
                break
            predicted = logits_of(model, layout, theta, pool[rest].to(theta.device)).argmax(1)
            picked += [i for i, p in zip(rest, predicted.tolist(), strict=True) if p == label]
            picked = picked[:ipc]
            if len(picked) == ipc:
                break
        if len(picked) < ipc:
            raise DdppError(
                f"the experts classify only {len(picked)} training images of class "
                f"'{class_names[label]}' correctly, fewer than --ipc {ipc}; use --labels hard or "
                "a smaller --ipc."
            )
        chosen.append(torch.tensor(picked, dtype=torch.long))
    return torch.cat(chosen)


def averaged_correct_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, K] from the experts' logits [E, N, K]: per image, the mean over the experts whose
    argmax is its label (DATM.py 298-306). DdppError if no expert classifies an image."""
    correct = logits.argmax(dim=2) == labels.view(1, -1)
    counts = correct.sum(dim=0)
    if bool((counts == 0).any()):
        raise DdppError(
            "no expert classifies some starting image correctly, so it has no teacher label; "
            "use --labels hard."
        )
    summed = (logits * correct.unsqueeze(2).to(logits.dtype)).sum(dim=0)
    return summed / counts.unsqueeze(1).to(logits.dtype)


def teacher_logits(
    model: nn.Module,
    layout: ParamLayout,
    thetas: Sequence[torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """The teacher labels of ``images``: :func:`averaged_correct_logits` of every expert's."""
    stacked = torch.stack(
        [logits_of(model, layout, theta, images.to(theta.device)).float() for theta in thetas]
    )
    return averaged_correct_logits(stacked, labels.to(stacked.device))
