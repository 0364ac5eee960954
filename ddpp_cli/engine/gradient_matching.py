"""Gradient matching (DC: Zhao, Mopuri & Bilen, ICLR 2021; DSA: Zhao & Bilen, ICML 2021).

The synthetic set S is learned so that the loss gradient it produces in a network matches the
one real data produces, class by class:

    L = Σ_c D(∇θ CE(f(R_c; θ), c), ∇θ CE(f(S_c; θ), c))

with the real gradient a constant and the synthetic one kept differentiable (second order, so
that L can be backpropagated into S). Everything here is a pure function; the outer/inner loop
that trains θ on S between matching steps is the caller's (docs/methods.md, DC and DSA).

Defaults and their source (VICO-UoE/DatasetCondensation, ``utils.py``: ``match_loss``,
``distance_wb``, ``get_loops``; ``main.py`` for the rest):

- distance ``"layerwise"`` (the reference's ``--dis_metric ours``): per parameter, reshape the
  two gradients to rows (conv ``(out, in·kh·kw)``, 3-D ``(C, h·w)``, linear ``(out, in)``) and
  sum ``1 − ⟨a, b⟩ / (‖a‖·‖b‖ + 1e−6)`` over rows; 1-D parameters (biases, norm scales and
  shifts) contribute 0. Alternatives ``"mse"`` (squared L2 distance of all gradients
  concatenated) and ``"cos"`` (1 − cosine of the concatenated vectors, 1e−6 in the denominator).
- cross-entropy with mean reduction over each class batch (``nn.CrossEntropyLoss()``).
- ``get_loops(ipc)`` → (outer_loop, inner_loop) from the reference's table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ddpp_cli.engine.augment import DSA, NONE
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.training import train_epoch

METRICS = ("layerwise", "mse", "cos")
EPSILON = 1e-6  # reference: 0.000001 in every denominator

# utils.get_loops: ipc -> (outer_loop, inner_loop)
LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}


def get_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for ``ipc``, as the reference's table; DdppError elsewhere."""
    if ipc not in LOOPS:
        raise DdppError(
            f"gradient matching has loop lengths only for IPC {', '.join(map(str, LOOPS))} (the "
            f"reference table); got IPC {ipc}. Use one of those IPCs."
        )
    return LOOPS[ipc]


def check_metric(metric: str) -> None:
    """DdppError naming the choices unless ``metric`` is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise DdppError(
            f"unknown matching distance '{metric}'; choose one of: {', '.join(METRICS)}."
        )


def _rows(gradient: torch.Tensor) -> torch.Tensor | None:
    """The reference's reshape of one parameter's gradient to rows; None for 1-D (ignored)."""
    shape = gradient.shape
    if gradient.ndim == 4:
        return gradient.reshape(shape[0], shape[1] * shape[2] * shape[3])
    if gradient.ndim == 3:
        return gradient.reshape(shape[0], shape[1] * shape[2])
    if gradient.ndim == 2:
        return gradient
    if gradient.ndim == 1:
        return None
    raise ValueError(f"no row layout for a {gradient.ndim}-D gradient")


def layer_distance(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """DC's distance of one parameter's gradients: Σ_rows 1 − cos (1e−6 added to the norm
    product); 0 for 1-D parameters."""
    if real.shape != syn.shape:
        raise ValueError(f"gradients of shapes {tuple(real.shape)} and {tuple(syn.shape)}")
    a, b = _rows(real), _rows(syn)
    if a is None or b is None:
        return torch.zeros((), dtype=syn.dtype, device=syn.device)
    cosine = (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1) + EPSILON)
    return (1 - cosine).sum()


def gradient_distance(
    real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor], metric: str = "layerwise"
) -> torch.Tensor:
    """D(G_real, G_syn) over all parameters, with ``metric`` one of :data:`METRICS`."""
    if len(real) != len(syn) or not real:
        raise ValueError("the two gradient lists must be non-empty and of the same length")
    if metric == "layerwise":
        return torch.stack([layer_distance(r, s) for r, s in zip(real, syn, strict=True)]).sum()
    flat_real = torch.cat([r.reshape(-1) for r in real])
    flat_syn = torch.cat([s.reshape(-1) for s in syn])
    if metric == "mse":
        return ((flat_syn - flat_real) ** 2).sum()
    if metric == "cos":
        return 1 - (flat_real * flat_syn).sum() / (flat_real.norm() * flat_syn.norm() + EPSILON)
    check_metric(metric)
    raise AssertionError("unreachable")


def class_gradient(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    label: int,
    *,
    create_graph: bool,
) -> list[torch.Tensor]:
    """∇θ CE(f(images; θ), label) for θ = ``params`` (name → tensor requiring grad), in the
    order of ``params``; ``create_graph`` keeps it differentiable (for the synthetic side)."""
    tensors = {**params, **dict(model.named_buffers())}
    logits = functional_call(model, tensors, (images,), strict=True)
    target = torch.full((images.shape[0],), int(label), dtype=torch.long, device=images.device)
    loss = F.cross_entropy(logits, target)
    return list(torch.autograd.grad(loss, list(params.values()), create_graph=create_graph))


def gradient_matching_loss(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    real: Sequence[torch.Tensor],
    syn: Sequence[torch.Tensor],
    *,
    labels: Sequence[int] | None = None,
    metric: str = "layerwise",
) -> torch.Tensor:
    """Σ_c D(∇θ CE(real[c]), ∇θ CE(syn[c])): ``real[c]``/``syn[c]`` are the (already
    augmented, Siamese for DSA) batches of class ``labels[c]`` (default c).

    The real gradients are constants; the synthetic ones carry the graph back into ``syn``.
    ``params`` must require grad (e.g. ``dict(model.named_parameters())``).
    """
    if len(real) != len(syn) or not real:
        raise ValueError("real and syn must hold one batch per class, the same classes")
    labels = list(range(len(real))) if labels is None else list(labels)
    check_metric(metric)
    total = None
    for label, real_batch, syn_batch in zip(labels, real, syn, strict=True):
        g_real = class_gradient(model, params, real_batch, label, create_graph=False)
        g_real = [g.detach() for g in g_real]
        g_syn = class_gradient(model, params, syn_batch, label, create_graph=True)
        term = gradient_distance(g_real, g_syn, metric)
        total = term if total is None else total + term
    return total


# ------------------------------------------------------------------------ one DC/DSA iteration


def draw_real(pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` images of ``pool`` (one class) drawn without replacement (all of them, shuffled,
    when the class is smaller), as the reference's ``get_images(c, n)``."""
    order = torch.randperm(len(pool), generator=generator)[:count]
    return pool[order.to(pool.device)]


def class_slices(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Indices of each class in ``labels`` (the synthetic set's class-major hard labels)."""
    return [torch.nonzero(labels == c).flatten() for c in range(num_classes)]


def optimized_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors ``optimizer`` updates: backward into them only (not the network's weights)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


@dataclass(frozen=True)
class MatchingLoops:
    """Settings of one DC/DSA iteration (reference ``main.py`` defaults)."""

    outer_loop: int
    inner_loop: int
    batch_real: int = 256
    batch_train: int = 256
    lr_net: float = 0.01
    metric: str = "layerwise"
    # DC: "none"; DSA: the DSA strategy (Siamese for matching, per-sample for training).
    dsa_strategy: str = NONE

    def __post_init__(self) -> None:
        if self.outer_loop < 1 or self.inner_loop < 0:
            raise DdppError("the outer loop needs at least 1 step and the inner loop 0 or more.")
        if self.batch_real < 1 or self.batch_train < 1:
            raise DdppError("batch sizes must be at least 1.")
        check_metric(self.metric)
        DSA(self.dsa_strategy)  # unknown op -> DdppError

    @property
    def dsa(self) -> DSA:
        return DSA(self.dsa_strategy)

    @classmethod
    def for_ipc(cls, ipc: int, **overrides: object) -> MatchingLoops:
        """The reference's loop lengths for ``ipc`` (:func:`get_loops`), other fields as given."""
        outer, inner = get_loops(ipc)
        return cls(outer_loop=outer, inner_loop=inner, **overrides)  # type: ignore[arg-type]


def gradient_matching_iteration(
    network: nn.Module,
    syn_images: torch.Tensor,
    syn_labels: torch.Tensor,
    image_optimizer: torch.optim.Optimizer,
    real_by_class: Sequence[torch.Tensor],
    loops: MatchingLoops,
    generator: torch.Generator,
) -> float:
    """One DC/DSA iteration on a freshly initialised ``network`` (docs/methods.md, DC and DSA).

    ``outer_loop`` times: draw ``batch_real`` real images per class, apply the class's Siamese
    DSA draw to its real and synthetic images (DSA only), take one ``image_optimizer`` step on
    the matching loss; then, except after the last outer step, train the network for
    ``inner_loop`` epochs on a detached copy of the synthetic set (SGD lr_net, batch_train,
    per-sample DSA for DSA). ``syn_images`` is the leaf tensor the optimizer updates. Returns
    the loss per class averaged over the outer steps (the reference's ``loss_avg``).
    """
    num_classes = len(real_by_class)
    slices = class_slices(syn_labels, num_classes)
    net_optimizer = torch.optim.SGD(network.parameters(), lr=loops.lr_net)
    params = dict(network.named_parameters())
    dsa = loops.dsa
    network.train()
    total = 0.0
    for step in range(loops.outer_loop):
        real = [draw_real(pool, loops.batch_real, generator) for pool in real_by_class]
        syn = [syn_images[index] for index in slices]
        if dsa.enabled:
            pairs = [dsa.siamese([r, s], generator) for r, s in zip(real, syn, strict=True)]
            real, syn = [p[0] for p in pairs], [p[1] for p in pairs]
        loss = gradient_matching_loss(network, params, real, syn, metric=loops.metric)
        image_optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=optimized_tensors(image_optimizer))
        image_optimizer.step()
        total += float(loss.detach())
        if step == loops.outer_loop - 1:
            break
        images, labels = syn_images.detach().clone(), syn_labels
        for _ in range(loops.inner_loop):
            train_epoch(
                network, images, labels, net_optimizer,
                batch_size=loops.batch_train, dsa=dsa, generator=generator,
            )  # fmt: skip
    return total / (num_classes * loops.outer_loop)
