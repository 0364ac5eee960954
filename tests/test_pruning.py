"""Pruning mask and matching loss, pinned on hand-made vectors (docs/distill.md#the-algorithm)."""

from __future__ import annotations

import pytest
import torch

from ddpp_cli.engine.pruning import matching_loss, prune_mask, similarity


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_similarity_values():
    s = t(2.0, -1.0, 0.0, 0.0, 4.0, -3.0, 5.0)
    target = t(4.0, 1.0, 0.0, 5.0, 1.0, -6.0, 0.0)
    expected = t(0.5, -1.0, 1.0, 0.0, 0.25, 0.5, 0.0)
    assert torch.equal(similarity(s, target), expected)


def test_opposite_signs_are_pruned():
    mask = prune_mask(t(1.0, -2.0, 0.3), t(-1.0, 2.0, -1e-6), 0.1)
    assert mask.tolist() == [False, False, False]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_magnitudes_20x_apart_are_pruned_at_0_1_and_kept_at_0_04(sign):
    s, target = t(sign * 1.0, sign * 20.0), t(sign * 20.0, sign * 1.0)
    assert prune_mask(s, target, 0.1).tolist() == [False, False]
    assert prune_mask(s, target, 0.04).tolist() == [True, True]


def test_close_values_are_kept():
    assert prune_mask(t(1.0, -0.5, 3.0), t(1.2, -0.4, 3.0), 0.1).tolist() == [True, True, True]


def test_zero_against_non_zero_is_pruned_and_two_zeros_are_kept():
    mask = prune_mask(t(0.0, 3.0, 0.0, -0.0), t(2.0, 0.0, 0.0, 0.0), 0.1)
    assert mask.tolist() == [False, False, True, True]


def test_eps_zero_prunes_nothing():
    s = t(1.0, -2.0, 0.0, 1.0, 0.0)
    target = t(-1.0, 40.0, 5.0, 1e-9, 0.0)
    assert prune_mask(s, target, 0.0).all()


def test_eps_outside_the_range_is_refused():
    with pytest.raises(ValueError):
        prune_mask(t(1.0), t(1.0), 1.0)
    with pytest.raises(ValueError):
        prune_mask(t(1.0), t(1.0), -0.1)


def test_mask_carries_no_gradient():
    s = t(1.0, -2.0, 3.0, 0.5).requires_grad_(True)
    target = t(1.1, 2.0, 3.0, 10.0)
    mask = prune_mask(s * 2.0, target, 0.1)
    assert mask.dtype == torch.bool and not mask.requires_grad and mask.grad_fn is None
    assert not similarity(s, target).requires_grad


def test_loss_equals_the_spec_formula():
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(50, generator=generator, dtype=torch.float64)
    target = start + torch.randn(50, generator=generator, dtype=torch.float64)
    end = (
        start
        + 0.5 * (target - start)
        + 0.3 * torch.randn(50, generator=generator, dtype=torch.float64)
    )
    mask = prune_mask(end, target, 0.1)
    assert 0 < int(mask.sum()) < 50  # some pruned, some kept
    rows = list(zip(start.tolist(), end.tolist(), target.tolist(), mask.tolist(), strict=True))
    numerator = sum((e - g) ** 2 for _, e, g, m in rows if m)
    denominator = sum((s - g) ** 2 for s, _, g, m in rows if m)
    loss = matching_loss(end, target, start, mask)
    assert loss.item() == pytest.approx(numerator / denominator, rel=1e-12)
    full = matching_loss(end, target, start)
    assert full.item() == pytest.approx(
        float(((end - target) ** 2).sum() / ((start - target) ** 2).sum()), rel=1e-12
    )


def test_pruned_parameters_get_no_gradient_and_cannot_poison_the_loss():
    start = t(1.0, 1.0, 1.0)
    target = t(2.0, 2.0, 2.0)
    end = t(1.5, float("inf"), -1.0).requires_grad_(True)
    mask = prune_mask(end, target, 0.1)
    assert mask.tolist() == [True, False, False]
    loss = matching_loss(end, target, start, mask)
    loss.backward()
    assert loss.item() == pytest.approx(0.25)
    assert end.grad.tolist() == [pytest.approx(-1.0), 0.0, 0.0]
