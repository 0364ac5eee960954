"""KIP's kernels and loss: the ensemble empirical NTK against the closed-form arc-cosine NTK, the
KRR against a direct solve, and the whole loss's gradients against finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpp_cli.engine import models
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.kip import kernels, krr


class OneHiddenRelu(nn.Module):
    """f(x) = a·relu(W x)/√m with W, a ~ N(0, 1): the NTK parameterisation, no bias."""

    def __init__(self, dim: int, width: int, generator: torch.Generator) -> None:
        super().__init__()
        self.hidden = nn.Parameter(
            torch.randn(width, dim, generator=generator, dtype=torch.float64)
        )
        self.out = nn.Parameter(torch.randn(width, generator=generator, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x.reshape(x.shape[0], -1) @ self.hidden.T)
        return (h @ self.out / math.sqrt(self.out.shape[0])).reshape(-1, 1)


def test_relu_ntk_closed_form_on_known_pairs():
    # Orthogonal unit vectors: φ = π/2 → Θ = (1 + 0)/(2π) + 0 = 1/(2π).
    # Equal unit vectors: φ = 0 → Θ = (0 + π)/(2π) + π/(2π) = 1.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    theta = kernels.relu_ntk(x, x)
    assert torch.allclose(
        theta,
        torch.tensor([[1.0, 1 / (2 * math.pi)], [1 / (2 * math.pi), 1.0]], dtype=torch.float64),
    )
    # Opposite vectors of norms 2 and 3: φ = π → Θ = 0 (ReLU units never both active).
    opposite = kernels.relu_ntk(torch.tensor([[2.0, 0]]), torch.tensor([[-3.0, 0]]))
    assert float(opposite) == pytest.approx(0.0, abs=1e-12)


def test_ensemble_empirical_ntk_tends_to_the_arccosine_ntk():
    width, ensemble = 4096, 4
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    networks = [OneHiddenRelu(5, width, generator) for _ in range(ensemble)]
    empirical = kernels.empirical_ntk(networks, x)
    exact = kernels.relu_ntk(x, x)
    # Each entry is a mean of width × ensemble i.i.d. terms: its error shrinks as 1/√(m E).
    tolerance = 5 / math.sqrt(width * ensemble)
    assert float((empirical - exact).abs().max() / exact.abs().max()) < tolerance
    # ... and a single narrow network is visibly off (the test can fail).
    narrow = kernels.empirical_ntk([OneHiddenRelu(5, 8, generator)], x)
    assert float((narrow - exact).abs().max() / exact.abs().max()) > tolerance


def test_cross_kernel_matches_the_joint_kernel_block():
    torch.manual_seed(0)
    network = models.create("convnet-d1-w4", 1, 2, (8, 8)).double()
    a, b = (
        torch.randn(3, 1, 8, 8, dtype=torch.float64),
        torch.randn(2, 1, 8, 8, dtype=torch.float64),
    )
    joint = kernels.empirical_ntk([network], torch.cat([a, b]))
    assert torch.allclose(kernels.empirical_ntk([network], a, b), joint[:3, 3:])
    # Θ(x, x) = ‖∂f(x)/∂θ‖², computed with plain autograd.
    network.zero_grad()
    network(a[:1])[0, 0].backward()
    squared = sum(float((p.grad**2).sum()) for p in network.parameters())
    assert joint[0, 0].item() == pytest.approx(squared, rel=1e-10)


def test_batchnorm_is_refused():
    with pytest.raises(DdppError, match="BatchNorm"):
        kernels.check_network(models.create("convnet-bn", 1, 2, (28, 28)), "convnet-bn")


def test_krr_prediction_is_the_direct_solve():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    targets = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    k_ss, k_ts = features @ features.T, targets @ features.T
    y = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    reg = 1e-2
    ridge = reg * torch.trace(k_ss) / 4  # KIP: |reg| · tr(K_ss) / n
    direct = k_ts @ torch.linalg.inv(k_ss + ridge * torch.eye(4, dtype=torch.float64)) @ y
    assert torch.allclose(krr.krr_predict(k_ts, k_ss, y, reg), direct, atol=1e-10)


def test_kip_loss_on_a_hand_computed_case():
    # K_ss = diag(2, 4), tr/n = 3, reg 1/3 → ridge 1 → (K + I)⁻¹ = diag(1/3, 1/5).
    k_ss = torch.diag(torch.tensor([2.0, 4.0]))
    k_ts = torch.tensor([[3.0, 5.0]])
    y_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y_t = torch.tensor([[0.0, 0.0]])
    loss, accuracy = krr.kip_loss(k_ts, k_ss, y_s, y_t, regularization=1 / 3)
    # prediction = [3/3, 5/5] = [1, 1]; ½ · mean(1², 1²) = 0.5.
    assert loss.item() == pytest.approx(0.5)
    assert accuracy.item() == 1.0  # argmax of [1, 1] and of [0, 0]: both 0


def test_centred_one_hot():
    y = krr.centred_one_hot(torch.tensor([2, 0]), 4)
    assert torch.equal(y, torch.tensor([[-0.25, -0.25, 0.75, -0.25], [0.75, -0.25, -0.25, -0.25]]))


def test_whole_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    networks = [models.create("convnet-d1-w3", 1, 2, (6, 6)).double() for _ in range(2)]
    x_t = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    y_t = krr.centred_one_hot(torch.tensor([0, 1, 2, 0, 1]), 3).double()
    x_s = torch.randn(3, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    y_s = krr.centred_one_hot(torch.tensor([0, 1, 2]), 3).double().requires_grad_(True)

    def loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k_ss = kernels.empirical_ntk(networks, images)
        k_ts = kernels.empirical_ntk(networks, x_t, images)
        return krr.kip_loss(k_ts, k_ss, labels, y_t, regularization=1e-2)[0]

    value = loss(x_s, y_s)
    grad_x, grad_y = torch.autograd.grad(value, (x_s, y_s))
    generator = torch.Generator().manual_seed(2)
    eps = 1e-5
    for _ in range(3):  # central differences along random directions of (X_s, y_s)
        dx = torch.randn(x_s.shape, generator=generator, dtype=torch.float64)
        dy = torch.randn(y_s.shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            plus = loss(x_s + eps * dx, y_s + eps * dy)
            minus = loss(x_s - eps * dx, y_s - eps * dy)
        numeric = float((plus - minus) / (2 * eps))
        analytic = float((grad_x * dx).sum() + (grad_y * dy).sum())
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    assert float(grad_x.abs().max()) > 0  # the gradient reaches the images through the kernel


def test_the_targets_jacobian_in_blocks_gives_the_same_kernel_and_gradient(monkeypatch):
    torch.manual_seed(1)
    network = models.create("convnet-d1-w3", 1, 2, (6, 6)).double()
    x_t = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    x_s = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, 2, dtype=torch.float64)

    def kernel_and_gradient():
        kernel = kernels.empirical_ntk([network], x_t, x_s)
        (grad,) = torch.autograd.grad((kernel * weights).sum(), x_s)
        return kernel.detach(), grad

    # Plain autograd through the joint kernel's cross block, the reference.
    joint = kernels.empirical_ntk([network], torch.cat([x_t, x_s]))[:5, 5:]
    (expected,) = torch.autograd.grad((joint * weights).sum(), x_s)
    monkeypatch.setattr(kernels, "JACOBIAN_CHUNK", 2)  # three blocks, recomputed in backward
    kernel, grad = kernel_and_gradient()
    assert torch.allclose(kernel, joint.detach()) and torch.allclose(grad, expected)
