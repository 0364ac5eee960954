"""Parameter pruning for trajectory matching (DDPP; docs/distill.md#the-algorithm, steps 3–4).

After the student unroll, parameters whose end value θ̃_N and expert target θ_{i+M} are "difficult
to match" (opposite signs, or magnitudes more than 1/ε apart) are dropped from the matching loss.
Three small pure functions: the elementwise similarity, the mask of kept parameters, and the
normalised matching loss over the kept parameters.
"""

from __future__ import annotations

import torch


def similarity(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Elementwise r = min(s/t, t/s).

    r is in (0, 1] for equal signs, negative for opposite signs, 0 where exactly one of ``s``,
    ``t`` is zero and 1 where both are (a matched pair). Not differentiable by design: the inputs
    are detached.
    """
    s, t = s.detach(), t.detach()
    s_zero, t_zero = s == 0, t == 0
    one = torch.ones((), dtype=s.dtype, device=s.device)
    safe_s = torch.where(s_zero, one, s)
    safe_t = torch.where(t_zero, one, t)
    r = torch.minimum(safe_s / safe_t, safe_t / safe_s)
    r = torch.where(s_zero ^ t_zero, torch.zeros_like(r), r)
    return torch.where(s_zero & t_zero, torch.ones_like(r), r)


def prune_mask(s: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    """Boolean mask of the parameters KEPT in the loss: r ≥ ε (ε = 0 keeps everything).

    Computed without autograd; the result is a constant for the backward pass.
    """
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    with torch.no_grad():
        if eps == 0.0:
            return torch.ones(s.shape, dtype=torch.bool, device=s.device)
        return similarity(s, t) >= eps


def matching_loss(
    student_end: torch.Tensor,
    target_end: torch.Tensor,
    start: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = Σ m (θ̃_N − θ_{i+M})² / Σ m (θ_i − θ_{i+M})² over the kept parameters ``mask``.

    ``mask`` None keeps every parameter (plain MTT). Pruned entries are excluded with
    ``torch.where``, so a non-finite pruned value cannot leak into the loss or its gradient.
    """
    target_end = target_end.detach()
    start = start.detach()
    if mask is None:
        mask = torch.ones(student_end.shape, dtype=torch.bool, device=student_end.device)
    zero = torch.zeros((), dtype=student_end.dtype, device=student_end.device)
    numerator = torch.where(mask, student_end - target_end, zero).square().sum()
    denominator = torch.where(mask, start - target_end, zero).square().sum()
    return numerator / denominator
