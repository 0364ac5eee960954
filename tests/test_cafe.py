"""CAFE: layer features, the loss against the formula, its gradient, the loop-control rules."""

from __future__ import annotations

import math

import pytest
import torch

from ddpp_cli.engine import cafe, models
from ddpp_cli.engine.cafe import CafeWeights
from ddpp_cli.engine.errors import DdppError

pytestmark = pytest.mark.usefixtures("one_thread")


def features(seed: int, per_class: int, classes: int = 3):
    """Class-major layer features of small made-up shapes (two maps and an embedding map)."""
    generator = torch.Generator().manual_seed(seed)
    n = per_class * classes
    shapes = [(2, 3, 3), (2, 2, 2), (4, 1, 1), (3, 1, 1)]
    layers = [torch.randn(n, *s, generator=generator, dtype=torch.float64) for s in shapes]
    return layers, torch.arange(classes).repeat_interleave(per_class)


def reference_loss(real, syn, classes: int, per_real: int, per_syn: int) -> float:
    """The paper's formula in the reference's form (view(K, n, …).mean(1), MSE sum; CE summed
    over the real images, written out with log-sum-exp), with Python loops."""
    weights = (0.1, 0.1, 1.0, 1.0)

    def means(x, n):
        return x.reshape(classes, n, *x.shape[1:]).mean(dim=1)

    total = 0.0
    for w, r, s in zip(weights, real, syn, strict=True):
        total += w * float(((means(r, per_real) - means(s, per_syn)) ** 2).sum())
    e_real, e_syn = real[-1].flatten(1), syn[-1].flatten(1)
    m_real, m_syn = means(e_real, per_real), means(e_syn, per_syn)
    total += float(((m_real - m_syn) ** 2).sum())
    ce = 0.0
    for i in range(e_real.shape[0]):
        logits = [float(e_real[i] @ m_syn[c]) for c in range(classes)]
        top = max(logits)
        log_norm = top + math.log(sum(math.exp(v - top) for v in logits))
        ce += log_norm - logits[i // per_real]
    return total + 0.01 * ce


def test_loss_equals_an_independent_computation_of_the_formula():
    real, real_labels = features(0, per_class=4)
    syn, syn_labels = features(1, per_class=2)
    found = cafe.cafe_loss(real, real_labels, syn, syn_labels, 3)
    assert found.total.item() == pytest.approx(reference_loss(real, syn, 3, 4, 2), rel=1e-12)
    assert found.total.item() == pytest.approx(
        (found.layers + found.embedding + found.discrimination).item(), rel=1e-12
    )
    # Order of the samples does not matter (class means), and the weights are applied.
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    shuffled = cafe.cafe_loss([r[order] for r in real], real_labels[order], syn, syn_labels, 3)
    assert shuffled.total.item() == pytest.approx(found.total.item(), rel=1e-12)
    zero = CafeWeights(layers=(0.0, 0.0, 0.0, 0.0), embedding=0.0, discrimination=1.0)
    only_ce = cafe.cafe_loss(real, real_labels, syn, syn_labels, 3, zero)
    assert only_ce.total.item() == pytest.approx(found.discrimination.item() / 0.01, rel=1e-12)


def test_gradient_into_the_synthetic_features_matches_finite_differences():
    real, real_labels = features(2, per_class=3)
    syn, syn_labels = features(3, per_class=1)
    syn = tuple(s.requires_grad_(True) for s in syn)
    assert torch.autograd.gradcheck(
        lambda *s: cafe.cafe_loss(real, real_labels, list(s), syn_labels, 3).total,
        syn, eps=1e-6, atol=1e-6,
    )  # fmt: skip


def test_convnet_layer_features_follow_the_reference_slicing():
    torch.manual_seed(0)
    model = models.create("convnet", 3, 10, 32)
    x = torch.randn(2, 3, 32, 32)
    f1, f2, f3, f4 = cafe.convnet_layer_features(model, x)
    assert [tuple(f.shape[1:]) for f in (f1, f2, f3, f4)] == [
        (128, 32, 32), (128, 16, 16), (128, 8, 8), (128, 4, 4),
    ]  # fmt: skip
    assert bool((f1 >= 0).all()) and bool((f3 >= 0).all())  # ReLU outputs
    assert torch.equal(f4, model.features(x))
    assert torch.equal(model.classifier(f4.flatten(1)), model(x))
    with pytest.raises(DdppError, match="--arch convnet"):
        cafe.convnet_layer_features(models.create("alexnet", 3, 10, 32), x)


def test_window_rules_and_monitor_value():
    flat = [0.50 + 0.001 * i for i in range(10)]
    assert not cafe.outer_loop_done(flat[:9])  # not 10 values yet
    assert cafe.outer_loop_done(flat)  # spread 0.009 < 0.04
    assert not cafe.outer_loop_done([0.1, *flat[1:]])  # spread 0.409
    # Only the last 10 count (the reference drops the oldest of a full window).
    assert cafe.outer_loop_done([0.1, *flat])
    moving = [0.1 + 0.01 * i for i in range(10)]  # spread 0.09 > 0.03
    assert cafe.inner_loop_done(moving) and not cafe.inner_loop_done(flat)
    assert not cafe.inner_loop_done(moving[:9])
    assert cafe.monitor_value(0.0, [0.2, 0.4]) == pytest.approx(0.3)
    assert cafe.monitor_value(0.3, [0.2, 0.4]) == pytest.approx(0.45)
    assert cafe.image_lr(0.1, 0) == 0.1 and cafe.image_lr(0.1, 1200) == 0.05
    assert cafe.image_lr(0.1, 1999) == pytest.approx(0.0125)


def test_a_class_without_images_is_refused():
    real, labels = features(0, per_class=2)
    with pytest.raises(DdppError, match="every class"):
        cafe.cafe_loss(real, labels, real, labels, 4)


# ----------------------------------------------------------------------------- one iteration


def tiny_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pools = [torch.randn(6, 1, 8, 8, generator=generator) + c for c in range(2)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = models.create("convnet-d3", 1, 2, 8)
    syn = torch.randn(2, 1, 8, 8, generator=generator).requires_grad_(True)
    return network, pools, syn, torch.tensor([0, 1])


def test_an_iteration_that_settles_at_once_is_one_sgd_step_on_the_loss():
    from ddpp_cli.engine.device import make_generator
    from ddpp_cli.engine.gradient_matching import draw_real

    network, pools, syn, labels = tiny_problem()
    start = syn.detach().clone()
    optimizer = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    # A window of 1 with λ1 = 1: the first monitor value ends the iteration.
    settings = cafe.CafeSettings(batch_real=4, monitor_per_class=3, window=1, lambda_1=1.0)
    result = cafe.cafe_iteration(
        network, syn, labels, optimizer, pools, settings, make_generator(0, "cafe")
    )
    assert (result.image_steps, result.inner_epochs, result.capped) == (1, 0, False)
    replay = make_generator(0, "cafe")
    real = torch.cat([draw_real(pool, 4, replay) for pool in pools])
    ref = start.clone().requires_grad_(True)
    expected = cafe.cafe_loss(
        cafe.convnet_layer_features(network, real), torch.tensor([0] * 4 + [1] * 4),
        cafe.convnet_layer_features(network, ref), labels, 2,
    ).total  # fmt: skip
    (grad,) = torch.autograd.grad(expected, ref)
    assert result.loss == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(syn.detach(), start - 0.1 * grad, atol=1e-7)


def test_window_rules_drive_the_loop_lengths_and_caps_end_runaway_loops():
    from ddpp_cli.engine.device import make_generator
    from ddpp_cli.engine.functional import flat_parameters

    network, pools, syn, labels = tiny_problem(1)
    weights = flat_parameters(network)
    optimizer = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    # λ1 = 1: the outer loop ends once the window (2) is full; λ2 = −1: every inner phase ends
    # once its window is full. So: step, 2 epochs, step → done.
    settings = cafe.CafeSettings(
        batch_real=4, monitor_per_class=3, window=2, lambda_1=1.0, lambda_2=-1.0,
        dsa_strategy="color_crop_cutout_flip_scale_rotate",
    )  # fmt: skip
    result = cafe.cafe_iteration(
        network, syn, labels, optimizer, pools, settings, make_generator(1, "cafe")
    )
    assert (result.image_steps, result.inner_epochs, result.capped) == (2, 2, False)
    assert not torch.equal(flat_parameters(network), weights)
    # Rules that never fire: the caps end both loops.
    capped = cafe.CafeSettings(
        batch_real=4, monitor_per_class=3, window=2, lambda_1=-1.0, lambda_2=2.0,
        max_image_steps=3, max_inner_epochs=2,
    )  # fmt: skip
    result = cafe.cafe_iteration(
        network, syn, labels, optimizer, pools, capped, make_generator(2, "cafe")
    )
    assert (result.image_steps, result.inner_epochs, result.capped) == (3, 4, True)
    with pytest.raises(DdppError, match="unknown DSA op"):
        cafe.CafeSettings(dsa_strategy="blur")
