"""Gradient matching (DC/DSA): the distance, the per-class loss, its gradient, get_loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpp_cli.engine import gradient_matching as gm
from ddpp_cli.engine import models
from ddpp_cli.engine.errors import DdppError

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_distance(real: list[torch.Tensor], syn: list[torch.Tensor], metric: str) -> float:
    """The paper's/reference's D written out with Python loops over rows, in float64."""
    if metric == "mse":
        return sum(
            float(((s.double() - r.double()) ** 2).sum()) for r, s in zip(real, syn, strict=True)
        )
    if metric == "cos":
        a = torch.cat([r.double().flatten() for r in real]).tolist()
        b = torch.cat([s.double().flatten() for s in syn]).tolist()
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return 1 - dot / (
            math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) + 1e-6
        )
    total = 0.0
    for r, s in zip(real, syn, strict=True):
        if r.ndim == 1:
            continue  # biases and norm parameters are ignored
        rows_r = r.double().reshape(r.shape[0], -1).tolist()
        rows_s = s.double().reshape(s.shape[0], -1).tolist()
        for a, b in zip(rows_r, rows_s, strict=True):
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
            total += 1 - dot / (norms + 1e-6)
    return total


def module_gradient(model: nn.Module, images: torch.Tensor, label: int) -> list[torch.Tensor]:
    """∇θ CE by an ordinary backward pass of the module (independent of functional_call)."""
    model.zero_grad()
    target = torch.full((len(images),), label)
    F.cross_entropy(model(images.detach()), target).backward()
    return [p.grad.clone() for p in model.parameters()]


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.GroupNorm(3, 3), nn.Tanh(), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    ).double()  # fmt: skip


def batches(seed: int, sizes: list[int], shape=(1, 4, 4), dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *shape, generator=generator, dtype=dtype) for n in sizes]


def test_layer_distance_reshape_rules_on_hand_made_gradients():
    # Linear (2, 2): rows [1, 0]·[1, 0] → cos 1; [0, 1]·[1, 0] → cos 0. Sum of (1 − cos) = 1.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert float(gm.layer_distance(a, b)) == pytest.approx(1 - 2 / (2 + 1e-6) + 1, abs=1e-12)
    # Conv (out, in, kh, kw) → out rows; 3-D (C, h, w) → C rows; 1-D → 0.
    conv_r, conv_s = torch.randn(4, 2, 3, 3).double(), torch.randn(4, 2, 3, 3).double()
    expected = reference_distance([conv_r], [conv_s], "layerwise")
    assert float(gm.layer_distance(conv_r, conv_s)) == pytest.approx(expected, rel=1e-10)
    three_r, three_s = torch.randn(3, 2, 5).double(), torch.randn(3, 2, 5).double()
    expected = reference_distance([three_r], [three_s], "layerwise")
    assert float(gm.layer_distance(three_r, three_s)) == pytest.approx(expected, rel=1e-10)
    assert float(gm.layer_distance(torch.ones(5), -torch.ones(5))) == 0.0
    # Opposite gradients: 1 − (−1) = 2 per row.
    assert float(gm.layer_distance(a, -a)) == pytest.approx(4.0, abs=1e-5)


@pytest.mark.parametrize("metric", gm.METRICS)
def test_loss_equals_an_independent_computation_of_the_formula(metric):
    model = small_net()
    real = batches(1, [5, 4, 6])
    syn = batches(2, [1, 2, 1])
    found = gm.gradient_matching_loss(model, dict(model.named_parameters()), real, syn,
                                      metric=metric)  # fmt: skip
    expected = sum(
        reference_distance(module_gradient(model, r, c), module_gradient(model, s, c), metric)
        for c, (r, s) in enumerate(zip(real, syn, strict=True))
    )
    assert found.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_loss_on_the_benchmark_convnet_ignores_biases_and_norm_parameters():
    torch.manual_seed(0)
    model = models.create("convnet-d3", 1, 2, 8)
    real, syn = (
        batches(3, [4, 4], (1, 8, 8), torch.float32),
        batches(4, [1, 1], (1, 8, 8), torch.float32),
    )
    found = gm.gradient_matching_loss(model, dict(model.named_parameters()), real, syn)
    expected = sum(
        reference_distance(module_gradient(model, r, c), module_gradient(model, s, c), "layerwise")
        for c, (r, s) in enumerate(zip(real, syn, strict=True))
    )
    assert found.item() == pytest.approx(expected, rel=1e-4)
    # Only the 3 conv weights and the classifier weight count: at most 3·128 + 2 rows × 2.
    assert 0 < found.item() <= 2 * 2 * (3 * 128 + 2)


@pytest.mark.slow
def test_gradient_into_the_synthetic_images_matches_finite_differences():
    model = small_net()
    params = dict(model.named_parameters())
    real = batches(5, [4, 3, 4])
    syn = [s.requires_grad_(True) for s in batches(6, [2, 1, 1])]

    def loss(*syn_batches):
        return gm.gradient_matching_loss(model, params, real, list(syn_batches))

    assert torch.autograd.gradcheck(loss, tuple(syn), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(
        lambda *s: gm.gradient_matching_loss(model, params, real, list(s), metric="mse"),
        tuple(syn), eps=1e-6, atol=1e-6,
    )  # fmt: skip


def test_real_side_is_a_constant_and_labels_can_be_given():
    model = small_net()
    params = dict(model.named_parameters())
    real = [r.requires_grad_(True) for r in batches(7, [3, 3])]
    syn = [s.requires_grad_(True) for s in batches(8, [1, 1])]
    gm.gradient_matching_loss(model, params, real, syn, labels=[2, 0]).backward()
    assert all(r.grad is None for r in real) and all(s.grad is not None for s in syn)
    swapped = gm.gradient_matching_loss(model, params, real[::-1], syn[::-1], labels=[0, 2])
    again = gm.gradient_matching_loss(model, params, real, syn, labels=[2, 0])
    assert swapped.item() == pytest.approx(again.item(), rel=1e-12)


def test_get_loops_table_and_unknown_choices():
    assert gm.get_loops(1) == (1, 1)
    assert gm.get_loops(10) == (10, 50)
    assert gm.get_loops(50) == (50, 10)
    with pytest.raises(DdppError, match="IPC 1, 10, 20, 30, 40, 50"):
        gm.get_loops(5)
    with pytest.raises(DdppError, match="choose one of: layerwise, mse, cos"):
        gm.gradient_distance([torch.zeros(2)], [torch.zeros(2)], "ours")


# ------------------------------------------------------------------------ one DC/DSA iteration


def tiny_problem(seed: int = 0, ipc: int = 1):
    generator = torch.Generator().manual_seed(seed)
    pools = [torch.randn(6, 1, 8, 8, generator=generator) + c for c in range(2)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = models.create("convnet-d3", 1, 2, 8)
    syn = torch.randn(2 * ipc, 1, 8, 8, generator=generator).requires_grad_(True)
    labels = torch.arange(2).repeat_interleave(ipc)
    return network, pools, syn, labels


def test_one_outer_step_is_one_sgd_step_on_the_matching_loss_and_leaves_the_net_untrained():
    from ddpp_cli.engine.device import make_generator
    from ddpp_cli.engine.functional import flat_parameters

    network, pools, syn, labels = tiny_problem()
    start, weights = syn.detach().clone(), flat_parameters(network)
    optimizer = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    loops = gm.MatchingLoops(outer_loop=1, inner_loop=5, batch_real=4)
    loss = gm.gradient_matching_iteration(
        network, syn, labels, optimizer, pools, loops, make_generator(0, "dc")
    )
    # Replay the draws: the same real batches, the same loss, one plain SGD step.
    replay = make_generator(0, "dc")
    real = [gm.draw_real(pool, 4, replay) for pool in pools]
    ref_syn = start.clone().requires_grad_(True)
    params = dict(network.named_parameters())
    expected = gm.gradient_matching_loss(network, params, real, [ref_syn[:1], ref_syn[1:]])
    (grad,) = torch.autograd.grad(expected, ref_syn)
    assert loss == pytest.approx(expected.item() / 2, rel=1e-6)
    assert torch.allclose(syn.detach(), start - 0.1 * grad, atol=1e-7)
    assert torch.equal(flat_parameters(network), weights)  # IPC 1: the net is never trained
    assert all(p.grad is None for p in network.parameters())


@pytest.mark.parametrize("strategy", ["none", "color_crop_cutout_flip_scale_rotate"])
def test_iterations_train_the_net_between_outer_steps_and_are_reproducible(strategy):
    from ddpp_cli.engine.device import make_generator
    from ddpp_cli.engine.functional import flat_parameters

    results = []
    for _ in range(2):
        network, pools, syn, labels = tiny_problem(ipc=2)
        weights = flat_parameters(network)
        optimizer = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
        loops = gm.MatchingLoops(outer_loop=2, inner_loop=2, batch_real=4, dsa_strategy=strategy)
        loss = gm.gradient_matching_iteration(
            network, syn, labels, optimizer, pools, loops, make_generator(1, "dc")
        )
        assert math.isfinite(loss)
        assert not torch.equal(flat_parameters(network), weights)  # trained once in between
        results.append((syn.detach().clone(), flat_parameters(network)))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_matching_loops_settings():
    assert gm.MatchingLoops.for_ipc(10).inner_loop == 50
    assert gm.MatchingLoops.for_ipc(1, dsa_strategy="crop").dsa.strategy == "crop"
    with pytest.raises(DdppError, match="unknown DSA op"):
        gm.MatchingLoops(1, 1, dsa_strategy="blur")
    with pytest.raises(DdppError, match="outer loop"):
        gm.MatchingLoops(0, 1)
