"""The kernels KIP regresses with: the empirical NTK of an ensemble of random finite networks
(``torch.func``), and the closed-form NTK of a one-hidden-layer ReLU network (arc-cosine).

The empirical NTK of a network f with one scalar output is Θ(x, x') = ⟨∂f(x)/∂θ, ∂f(x')/∂θ⟩;
averaged over an ensemble of independently initialised networks it estimates the expected
kernel, which for NTK-parameterised networks tends to the infinite-width NTK as the width
grows (Jacot et al. 2018). One scalar output suffices: the infinite-width NTK of K outputs is
Θ ⊗ I_K (Jacot et al., Theorem 1), so ddpp takes each network's first output (the other
outputs' weights have no gradient there: it is the NTK of the network with that one head).
The kernel is differentiable w.r.t. both inputs: the gradient of KIP's loss reaches the
support images through the Jacobians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ddpp_cli.engine.errors import DdppError

# Images per vmapped Jacobian: bounds the (chunk, parameters) Jacobian held at once.
JACOBIAN_CHUNK = 256


def check_network(network: nn.Module, arch: str) -> None:
    """DdppError for a network whose per-image output depends on the batch (BatchNorm)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules()):
        raise DdppError(
            f"--method kip computes per-image Jacobians, which BatchNorm ({arch}) does not "
            "have; use an architecture without BatchNorm (e.g. --arch convnet)."
        )


def jacobian(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, P): the gradient of the network's first output w.r.t. all its parameters, one row
    per image (vmapped per image, in chunks of :data:`JACOBIAN_CHUNK`); differentiable w.r.t.
    ``images`` when they require grad."""
    params = {name: p.detach() for name, p in network.named_parameters()}
    buffers = dict(network.named_buffers())

    def output(theta: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return functional_call(network, (theta, buffers), (image.unsqueeze(0),))[0, 0]

    per_image = vmap(jacrev(output), in_dims=(None, 0))
    rows = []
    for start in range(0, images.shape[0], JACOBIAN_CHUNK):
        grads = per_image(params, images[start : start + JACOBIAN_CHUNK])
        rows.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1))
    return rows[0] if len(rows) == 1 else torch.cat(rows)


def empirical_ntk(
    networks: Sequence[nn.Module], x1: torch.Tensor, x2: torch.Tensor | None = None
) -> torch.Tensor:
    """(N1, N2): the empirical NTK J(x1) J(x2)ᵀ averaged over ``networks`` (each with its
    first output); ``x2`` None means x1 (one Jacobian, a symmetric kernel). An input that does not
    require grad has its Jacobian computed without a graph; against a learned ``x2``, an ``x1``
    of more than one block has its blocks recomputed in the backward pass (bounded memory)."""
    total = None
    for network in networks:
        blocks = x1.shape[0] > JACOBIAN_CHUNK  # else one block: kept, as cheap as recomputed
        if x2 is not None and x2.requires_grad and not x1.requires_grad and blocks:
            kernel = _fixed_by_learned(network, x1, jacobian(network, x2))
        else:
            j1 = _jacobian_maybe_graph(network, x1)
            j2 = j1 if x2 is None else _jacobian_maybe_graph(network, x2)
            kernel = j1 @ j2.T
        total = kernel if total is None else total + kernel
    if total is None:
        raise ValueError("an empirical NTK needs at least one network")
    return total / len(networks)


def _fixed_by_learned(
    network: nn.Module, fixed: torch.Tensor, learned_jacobian: torch.Tensor
) -> torch.Tensor:
    """J(fixed) J_learnedᵀ in blocks of :data:`JACOBIAN_CHUNK` images, each block's Jacobian
    recomputed in the backward pass instead of kept (:class:`_FixedRows`): memory holds one
    block's (chunk, parameters) Jacobian, not the whole target batch's."""
    blocks = [
        _FixedRows.apply(learned_jacobian, network, fixed[start : start + JACOBIAN_CHUNK])
        for start in range(0, fixed.shape[0], JACOBIAN_CHUNK)
    ]
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


class _FixedRows(torch.autograd.Function):
    """J(images) Jᵀ for images without gradient: backward recomputes J(images)."""

    @staticmethod
    def forward(ctx, learned: torch.Tensor, network: nn.Module, images: torch.Tensor):  # type: ignore[override]
        ctx.network, ctx.images = network, images
        return jacobian(network, images) @ learned.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        with torch.no_grad():
            rows = jacobian(ctx.network, ctx.images)
        return grad.T @ rows, None, None


def _jacobian_maybe_graph(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if images.requires_grad:
        return jacobian(network, images)
    with torch.no_grad():
        return jacobian(network, images)


def relu_ntk(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """(N1, N2): the infinite-width NTK of f(x) = a·relu(W x)/√m with W, a ~ N(0, 1), no bias
    (arc-cosine kernels of degrees 1 and 0, Cho & Saul 2009; Arora et al. 2019, eq. 4):

    Θ(x, x') = ‖x‖‖x'‖ (sin φ + (π − φ) cos φ) / (2π) + ⟨x, x'⟩ (π − φ) / (2π),

    φ the angle between x and x' (flattened); the first term is the output layer's gradient,
    the second the hidden layer's."""
    a, b = x1.reshape(x1.shape[0], -1).double(), x2.reshape(x2.shape[0], -1).double()
    dots = a @ b.T
    norms = a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]
    cos = (dots / norms).clamp(-1.0, 1.0)
    phi = torch.arccos(cos)
    first = norms * (torch.sin(phi) + (math.pi - phi) * cos) / (2 * math.pi)
    second = dots * (math.pi - phi) / (2 * math.pi)
    return first + second
