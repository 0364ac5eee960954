"""Distribution matching (DM): ψ, the loss against the formula, its gradient, frozen networks."""

from __future__ import annotations

import pytest
import torch

from ddpp_cli.engine import distribution_matching as dm
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.device import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def batches(seed, sizes, shape=(1, 8, 8), dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *shape, generator=generator, dtype=dtype) for n in sizes]


def test_embedding_is_the_flattened_trunk_output():
    model = dm.frozen_network("convnet", 1, 10, 28, seed=0, iteration=0)
    x = torch.randn(3, 1, 28, 28)
    psi = dm.embedding(model, x)
    assert psi.shape == (3, 2048)  # 28 px: the first conv pads to 32, 128·4·4
    assert torch.equal(psi, model.features(x).flatten(1))
    assert not any(p.requires_grad for p in model.parameters())
    again = dm.frozen_network("convnet", 1, 10, 28, seed=0, iteration=0)
    other = dm.frozen_network("convnet", 1, 10, 28, seed=0, iteration=1)
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)


def reference_loss(model, real, syn) -> float:
    """Σ_c Σ_d (mean_i ψ(r_i)_d − mean_j ψ(s_j)_d)², written out with Python loops."""
    total = 0.0
    for r, s in zip(real, syn, strict=True):
        fr = model.features(r).flatten(1).tolist()
        fs = model.features(s.detach()).flatten(1).tolist()
        for d in range(len(fr[0])):
            mean_r = sum(row[d] for row in fr) / len(fr)
            mean_s = sum(row[d] for row in fs) / len(fs)
            total += (mean_r - mean_s) ** 2
    return total


def test_loss_equals_an_independent_computation_of_the_formula():
    model = dm.frozen_network("convnet-d3", 1, 3, 8, seed=1, iteration=0).double()
    real, syn = batches(0, [5, 4, 6]), batches(1, [1, 2, 1])
    found = dm.distribution_matching_loss(model, real, syn)
    assert found.item() == pytest.approx(reference_loss(model, real, syn), rel=1e-10)


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GroupNorm(4, 4), torch.nn.Tanh(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 2),
    ).double()  # fmt: skip


def test_gradient_into_the_synthetic_images_matches_finite_differences():
    model = small_net()
    real = batches(2, [4, 3], (1, 4, 4))
    syn = tuple(s.requires_grad_(True) for s in batches(3, [2, 1], (1, 4, 4)))
    assert torch.autograd.gradcheck(
        lambda *s: dm.distribution_matching_loss(model, real, list(s)), syn, eps=1e-6, atol=1e-6
    )
    real = [r.requires_grad_(True) for r in real]
    dm.distribution_matching_loss(model, real, list(syn)).backward()
    assert all(r.grad is None for r in real)  # the real side is a constant


def test_batchnorm_networks_embed_each_side_in_one_forward_as_main_dm():
    # main_DM.py's ConvNetBN branch: embed(cat(real of every class)) and, separately,
    # embed(cat(synthetic of every class)); the means per class reshaped from each.
    model = dm.frozen_network("convnet-bn", 1, 2, 8, seed=0, iteration=0).double()
    real, syn = batches(4, [3, 3]), batches(5, [2, 2])
    found = dm.distribution_matching_loss(model, real, syn)
    output_real = model.features(torch.cat(real)).flatten(1).reshape(2, 3, -1)
    output_syn = model.features(torch.cat(syn)).flatten(1).reshape(2, 2, -1)
    expected = torch.sum((output_real.mean(dim=1) - output_syn.mean(dim=1)) ** 2)
    assert found.item() == pytest.approx(expected.item(), rel=1e-10)
    # Neither the per-class forward nor one joint forward of both sides: BN statistics differ.
    assert found.item() != pytest.approx(reference_loss(model, real, syn), rel=1e-6)
    joint = model.features(torch.cat([*real, *syn])).flatten(1).split([3, 3, 2, 2])
    mixed = sum(((joint[c].mean(0) - joint[2 + c].mean(0)) ** 2).sum() for c in range(2))
    assert found.item() != pytest.approx(mixed.item(), rel=1e-6)
    syn = [s.clone().requires_grad_(True) for s in syn]
    dm.distribution_matching_loss(model, real, syn).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in syn)


def test_siamese_augmentation_feeds_the_loss_identically_on_both_sides():
    # With the synthetic images equal to the real ones and one shared draw per class, the
    # distance is exactly 0; per-sample draws would not give 0.
    model = dm.frozen_network("convnet-d3", 1, 2, 8, seed=0, iteration=0)
    real = [b.float() for b in batches(6, [2, 2])]
    generator = make_generator(0, "dm-test")
    pairs = [DSA().siamese([r, r.clone()], generator) for r in real]
    loss = dm.distribution_matching_loss(model, [p[0] for p in pairs], [p[1] for p in pairs])
    assert loss.item() == 0.0


def test_one_iteration_is_one_sgd_step_on_the_loss_with_siamese_draws():
    from ddpp_cli.engine.gradient_matching import draw_real

    generator = torch.Generator().manual_seed(0)
    pools = [torch.randn(6, 1, 8, 8, generator=generator) + c for c in range(2)]
    syn = torch.randn(4, 1, 8, 8, generator=generator).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1])
    start = syn.detach().clone()
    model = dm.frozen_network("convnet-d3", 1, 2, 8, seed=0, iteration=3)
    optimizer = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    loss = dm.distribution_matching_iteration(
        model, syn, labels, optimizer, pools, batch_real=5, generator=make_generator(0, "dm")
    )
    replay = make_generator(0, "dm")
    real = [draw_real(pool, 5, replay) for pool in pools]
    ref = start.clone().requires_grad_(True)
    pairs = [DSA().siamese([r, s], replay) for r, s in zip(real, [ref[:2], ref[2:]], strict=True)]
    expected = dm.distribution_matching_loss(model, [p[0] for p in pairs], [p[1] for p in pairs])
    (grad,) = torch.autograd.grad(expected, ref)
    assert loss == pytest.approx(expected.item() / 2, rel=1e-6)
    assert torch.allclose(syn.detach(), start - grad, atol=1e-6)
