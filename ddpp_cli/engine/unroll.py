"""The student unroll of trajectory matching and its gradient, in two exact modes.

The algorithm is in docs/distill.md.

θ̃_0 = θ_i and θ̃_{j+1} = θ̃_j − α g_j with g_j = ∇_θ CE(f(A_j(b_j); θ̃_j)). The matching loss L
is a function of θ̃_N; its gradient w.r.t. the images X and α needs the second derivatives of
every step. Two ways to get it, equal up to rounding:

* ``graph`` (MTT): keep the whole unrolled graph (``create_graph``) and call ``backward`` once.
  Memory grows linearly with N.
* ``memory``: keep only the N + 1 flat parameter vectors (detached) and the recorded draws
  (minibatches and DSA parameters from :func:`~ddpp_cli.engine.student.plan_unroll`). Walk the
  steps in reverse, rebuild one step's graph at a time and propagate the adjoint
  a = dL/dθ̃_{j+1} with Hessian-vector products (:func:`reverse_step`):
  dL/dθ̃_j = a − α (∂g_j/∂θ)ᵀ a,  dL/dX += −α (∂g_j/∂X)ᵀ a,  dL/dα += −⟨a, g_j⟩.
  Peak memory is that of one step's double-backward graph, whatever N is (unlike TESLA's
  first-order shortcut, this is exact).

The network itself is a :class:`~ddpp_cli.engine.student.Student`, a pure function of θ.

Label vectors Y (``--labels teacher|learned``, DATM) replace the class indices in g_j (soft
cross-entropy, :func:`~ddpp_cli.engine.student.label_loss`). When Y requires grad
(``learned``), both modes also give dL/dY: ``graph`` through the kept graph, ``memory`` by
dL/dY += −α (∂g_j/∂Y)ᵀ a at each reverse step. With class indices nothing changes.

Across ranks (``Student(world=...)``, under torchrun) every rank holds the same θ̃_j, X and α and
replays the same draws; rank r takes the contiguous share [s_r, e_r) of each step's minibatch of
B images and computes g_j^r = (e_r − s_r)/B · ∇CE on it, so that Σ_r g_j^r is the full-batch
mean's gradient g_j. In ``graph`` mode the sum is differentiable (its backward sums across ranks
too) and each rank backpropagates L / world size; in ``memory`` mode the forward sums each g_j
and the reverse pass sums each Hessian-vector product (∂g_j/∂θ)ᵀ a, so the adjoint stays the
same on every rank. Each rank's dL/dX covers its shares only and its dL/dα its part of
−Σ_j ⟨a_j, g_j⟩; both are summed across the ranks at the end, so every rank steps the same X
and α. The result equals one process's up to rounding (docs/parallel.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.distributed import World, sum_across
from ddpp_cli.engine.functional import ParamLayout
from ddpp_cli.engine.pruning import matching_loss, prune_mask
from ddpp_cli.engine.student import Student, UnrollStep

UNROLL_MODES = ("graph", "memory")

GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SumFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MatchResult:
    """One iteration's matching loss (a float; gradients are in ``.grad``) and pruned share."""

    loss: float
    pruned_fraction: float


# ------------------------------------------------------------------------- graph mode


def unroll_graph(
    student: Student,
    start: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    steps: list[UnrollStep],
) -> torch.Tensor:
    """θ̃_N with the whole unrolled graph kept: differentiable w.r.t. ``images`` and ``lr``."""
    with torch.enable_grad():
        theta = start.detach().requires_grad_(True)
        for step in steps:
            x, y = student.inputs(images, labels, step)
            share = student.share(step, len(labels))
            grad = student.shard_gradient(theta, x, y, share, create_graph=True)
            theta = theta - lr * sum_across(student.world, grad)
    return theta


def unroll(
    model: nn.Module,
    layout: ParamLayout,
    start: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    steps: list[UnrollStep],
    dsa: DSA,
) -> torch.Tensor:
    """θ̃_N from θ̃_0 = ``start`` by θ̃_{j+1} = θ̃_j − α ∇CE(f(A(b_j); θ̃_j)), graph kept.

    The result is differentiable w.r.t. ``images`` and ``lr`` (second order through each step).
    """
    return unroll_graph(Student(model, layout, dsa), start, images, labels, lr, steps)


# ------------------------------------------------------------------------- memory mode


@dataclass(frozen=True)
class KeptStep:
    """A step of the memory mode whose double-backward graph was kept from the forward pass:
    the leaves θ̃_j and x_j, this rank's part of g_j (differentiable w.r.t. both) and the
    augmented input ``x`` with its graph to the images (through the DSA and the indexing)."""

    theta: torch.Tensor
    x_leaf: torch.Tensor
    grad: torch.Tensor
    x: torch.Tensor
    y_leaf: torch.Tensor | None = None  # learned label vectors: the step's rows, as a leaf
    y: torch.Tensor | None = None  # the same rows with their graph to the label leaf


def graph_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages among ``tensors`` (what a kept graph holds on to)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        if tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def _kept_step(
    student: Student, theta: torch.Tensor, source: torch.Tensor, labels: torch.Tensor,
    step: UnrollStep, *, measure: bool = True, label_source: torch.Tensor | None = None,
) -> tuple[KeptStep, int]:  # fmt: skip
    """Step ``step`` from θ̃_j = ``theta`` with its double-backward graph kept, and (``measure``)
    the bytes that graph saves (tensors saved for backward, counted once per storage; else 0).
    With ``label_source`` (learned label vectors) the step's labels are a leaf of g too."""
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    counting = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.enable_grad(), counting if measure else contextlib.nullcontext():
        x, y = student.inputs(source, labels if label_source is None else label_source, step)
        theta = theta.detach().requires_grad_(True)
        x_leaf = x.detach().requires_grad_(True)
        y_leaf = None if label_source is None else y.detach().requires_grad_(True)
        share = student.share(step, len(labels))
        grad = student.shard_gradient(
            theta, x_leaf, y if y_leaf is None else y_leaf, share, create_graph=True
        )
    kept = KeptStep(theta, x_leaf, grad, x, y_leaf, None if y_leaf is None else y)
    return kept, graph_bytes(saved)


def kept_count(graph_size: int, budget: int, steps: int, world: World) -> int:
    """How many of the last steps' graphs fit ``budget`` bytes (the same on every rank)."""
    count = steps if graph_size <= 0 else min(steps, budget // graph_size)
    if world.distributed:
        count = min(world.gather(count))
    return count


def unroll_states(
    student: Student,
    start: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    steps: list[UnrollStep],
    *,
    keep_bytes: int = 0,
    source: torch.Tensor | None = None,
    label_source: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], dict[int, KeptStep]]:
    """[θ̃_0, …, θ̃_N], detached (the forward pass of the memory mode), and the steps whose
    graphs were kept.

    With ``keep_bytes`` > 0, the double-backward graphs of the last K steps are kept instead of
    being rebuilt in the reverse pass, K as many as fit ``keep_bytes`` (measured on the first
    step). ``source`` is the leaf the kept steps' inputs hang from (the images, detached, that
    :func:`backprop_unroll` differentiates with respect to), ``label_source`` likewise the
    learned label vectors' leaf (None: the labels are constants).
    """
    images, lr, labels = images.detach(), lr.detach(), labels.detach()
    if keep_bytes > 0 and source is None:
        raise ValueError("keeping graphs needs the source leaf of backprop_unroll")
    thetas = [start.detach()]
    kept: dict[int, KeptStep] = {}
    first = len(steps)  # the first step whose graph is kept (decided on step 0)
    for j, step in enumerate(steps):
        if keep_bytes > 0 and (j == 0 or j >= first):
            built, size = _kept_step(
                student, thetas[-1], source, labels, step, measure=j == 0,
                label_source=label_source,
            )  # fmt: skip
            if j == 0:
                first = len(steps) - kept_count(size, keep_bytes, len(steps), student.world)
            if j >= first:
                kept[j] = built
            grad = built.grad.detach().clone()
            del built  # a graph not kept is freed now (a kept one lives on in ``kept``)
        else:
            with torch.no_grad():
                x, y = student.inputs(images, labels, step)
            share = student.share(step, len(labels))
            grad = student.shard_gradient(thetas[-1], x, y, share, create_graph=False)
        thetas.append((thetas[-1] - lr * student.world.sum(grad)).detach())
    return thetas, kept


def reverse_step(
    grad_fn: GradFn,
    theta: torch.Tensor,
    x: torch.Tensor,
    lr: torch.Tensor,
    adjoint: torch.Tensor,
    sum_ranks: SumFn | None = None,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Backpropagate a = dL/dθ' through θ' = θ − α g(θ, x) (one step, exact).

    ``grad_fn(theta, x)`` must return g differentiably (``create_graph``). Returns
    (dL/dθ, dL/dx, dL/dα) = (a − α (∂g/∂θ)ᵀ a, −α (∂g/∂x)ᵀ a, −⟨a, g⟩), the products being
    vector-Jacobian products through the gradient (Hessian-vector products for θ). When g is a
    sum of parts on several ranks (``grad_fn`` giving this rank's part), ``sum_ranks`` adds up
    the parts of (∂g/∂θ)ᵀ a; dL/dx and dL/dα are then this rank's parts. With ``y`` (learned
    label vectors), g is ``grad_fn(theta, x, y)`` and a fourth value, −α (∂g/∂y)ᵀ a, follows.
    """
    with torch.enable_grad():
        theta = theta.detach().requires_grad_(True)
        x = x.detach().requires_grad_(True)
        if y is None:
            g = grad_fn(theta, x)
        else:
            y = y.detach().requires_grad_(True)
            g = grad_fn(theta, x, y)  # type: ignore[call-arg]
    return reverse_kept(theta, x, g, lr, adjoint, sum_ranks, y)


def reverse_kept(
    theta: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    lr: torch.Tensor,
    adjoint: torch.Tensor,
    sum_ranks: SumFn | None = None,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`reverse_step` on a step whose graph exists: g built from the leaves θ and x (and
    ``y``, whose −α (∂g/∂y)ᵀ a is then returned fourth)."""
    lr = lr.detach()
    leaves = (theta, x) if y is None else (theta, x, y)
    found = torch.autograd.grad(g, leaves, grad_outputs=adjoint, allow_unused=True)
    h_theta, h_x, *h_y = (
        torch.zeros_like(leaf) if h is None else h for leaf, h in zip(leaves, found, strict=True)
    )
    if sum_ranks is not None:
        h_theta = sum_ranks(h_theta)
    result = (adjoint - lr * h_theta, -lr * h_x, -(adjoint * g.detach()).sum())
    return result if y is None else (*result, -lr * h_y[0])


def accumulator_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype of the dL/dα sum over the unrolled steps: float64, or float32 on MPS.

    MPS has no float64 tensors; elsewhere the sum of N step terms is kept in float64.
    """
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def backprop_unroll(
    student: Student,
    thetas: list[torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    steps: list[UnrollStep],
    adjoint: torch.Tensor,
    *,
    kept: dict[int, KeptStep] | None = None,
    source: torch.Tensor | None = None,
    label_source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """(dL/dX, dL/dα) from a = dL/dθ̃_N, rebuilding one step's graph at a time in reverse
    (across ranks: this rank's parts of both; the adjoint is summed at every step). The steps in
    ``kept`` (from :func:`unroll_states`, built on ``source``) use their kept graphs instead.
    With ``label_source`` (the learned label vectors' leaf) dL/dY follows as a third value."""
    kept = {} if kept is None else kept
    grad_labels = None if label_source is None else torch.zeros_like(label_source)
    grad_images = torch.zeros_like(images, memory_format=torch.contiguous_format)
    grad_lr = torch.zeros((), dtype=accumulator_dtype(lr.device), device=lr.device)
    source = images.detach().requires_grad_(True) if source is None else source
    sum_ranks = student.world.sum if student.world.distributed else None
    for j in reversed(range(len(steps))):
        if j in kept:
            step = kept.pop(j)  # its graph is freed once used
            x, y = step.x, step.y
            adjoint, grad_x, step_lr, *grad_y = reverse_kept(
                step.theta, step.x_leaf, step.grad, lr, adjoint, sum_ranks, step.y_leaf
            )
        else:
            with torch.enable_grad():
                x, y = student.inputs(
                    source, labels if label_source is None else label_source, steps[j]
                )
            share = student.share(steps[j], len(labels))

            def grad_fn(
                theta: torch.Tensor,
                x_leaf: torch.Tensor,
                y_leaf: torch.Tensor = y,
                share: float = share,
            ) -> torch.Tensor:
                return student.shard_gradient(theta, x_leaf, y_leaf, share, create_graph=True)

            adjoint, grad_x, step_lr, *grad_y = reverse_step(
                grad_fn, thetas[j], x, lr, adjoint, sum_ranks,
                None if label_source is None else y,
            )  # fmt: skip
        if grad_labels is not None:  # through the minibatch indexing to the label leaf
            if y is label_source:
                grad_labels += grad_y[0]
            elif y.shape[0] > 0:
                (grad_source,) = torch.autograd.grad(y, label_source, grad_outputs=grad_y[0])
                grad_labels += grad_source
        grad_lr += step_lr.to(grad_lr.dtype)
        if x is source:
            grad_images += grad_x
        else:  # through the DSA and the minibatch indexing (first order, cheap)
            (grad_source,) = torch.autograd.grad(x, source, grad_outputs=grad_x)
            grad_images += grad_source
    if grad_labels is None:
        return grad_images, grad_lr.to(lr.dtype)
    return grad_images, grad_lr.to(lr.dtype), grad_labels


# ------------------------------------------------------------------------- one iteration


def match(
    student: Student,
    start: torch.Tensor,
    target: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor,
    steps: list[UnrollStep],
    eps: float,
    mode: str = "graph",
    keep_bytes: int = 0,
) -> MatchResult:
    """Unroll, prune (mask on θ̃_N), and accumulate dL/dX and dL/dα into ``.grad``.

    ``images`` and ``lr`` are leaves that require grad; ``labels`` are class indices, or label
    vectors (soft CE), a leaf whose dL/dY is accumulated too when it requires grad. Nothing is
    accumulated when L is not finite (the caller stops the run). Across ranks
    (``student.world``) the gradients, which must be None before the call, are the whole ones,
    the same on every rank. In ``memory`` mode, ``keep_bytes`` is the budget for keeping the
    last steps' graphs (:func:`unroll_states`).
    """
    if mode not in UNROLL_MODES:
        raise ValueError(f"unroll mode must be one of {UNROLL_MODES}, got {mode!r}")
    leaves = [images, lr, labels] if labels.requires_grad else [images, lr]
    if mode == "graph":
        end = unroll_graph(student, start, images, labels, lr, steps)
        thetas: list[torch.Tensor] = []
    else:
        source = images.detach().requires_grad_(True)
        label_source = labels.detach().requires_grad_(True) if labels.requires_grad else None
        thetas, kept = unroll_states(
            student, start, images, labels, lr, steps, keep_bytes=keep_bytes, source=source,
            label_source=label_source,
        )  # fmt: skip
        end = thetas[-1].requires_grad_(True)
    mask = prune_mask(end.detach(), target, eps)
    with torch.enable_grad():
        loss = matching_loss(end, target, start, mask)
    value = float(loss.detach())
    result = MatchResult(value, 1.0 - float(mask.float().mean()))
    if not torch.isfinite(loss.detach()):
        return result
    world = student.world
    if mode == "graph":
        if world.distributed:  # each rank's copy of L counts 1/size of the one objective
            loss = loss / world.size
        loss.backward(inputs=leaves)
    else:
        (adjoint,) = torch.autograd.grad(loss, end)
        grads = backprop_unroll(
            student, thetas, images, labels, lr, steps, adjoint, kept=kept, source=source,
            label_source=label_source,
        )  # fmt: skip
        for leaf, grad in zip(leaves, grads, strict=True):
            _accumulate(leaf, grad)
    if world.distributed:  # each rank holds its parts: add them up
        for leaf in leaves:
            leaf.grad = world.sum(torch.zeros_like(leaf) if leaf.grad is None else leaf.grad)
    return result


def _accumulate(leaf: torch.Tensor, grad: torch.Tensor) -> None:
    grad = grad.to(leaf.dtype).reshape(leaf.shape)
    leaf.grad = grad if leaf.grad is None else leaf.grad + grad
