"""Step-size defaults for datasets without a paper row (issue 14; docs/distill.md).

The paper's rows (CIFAR-10/100, Tiny ImageNet) were tuned on 50,000-image sets, whose experts
take ~200 SGD steps per epoch. A small folder's expert takes a handful (1,400 images at batch 256:
6 steps), so N = 20 student steps at the expert's lr travel farther than the M expert epochs
they must match: the student overshoots, the matching loss starts above 1, ∂L/∂α is in the
hundreds, and a fixed ``lr_lr`` of 1e-5 moves α by about its own size in one step, below zero.
Two values are therefore derived when neither the user nor a paper row sets them:

- ``lr_teacher`` (α's initial value), before the run, from the buffer: the student's N steps
  travel no farther than the expert's M epochs of S = ⌈n / batch⌉ steps at lr η:
  α₀ = η · min(1, M·S / N).  (:func:`teacher_lr`)
- ``lr_lr`` (α's own learning rate), from a probe of the first iteration's gradient at α₀ (the
  initial images, the first expert, a few start epochs; no update made): the first α step is
  :data:`ALPHA_STEP` of α₀, whatever the gradient's scale:
  lr_lr = ρ · α₀ / mean |∂L/∂α|.  (:func:`lr_lr_from_gradient`)

Both are pure functions, pinned by tests; :func:`calibrate` applies them to a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.student import plan_unroll
from ddpp_cli.engine.unroll import match

ALPHA_STEP = 0.01  # ρ: the first α update is 1 % of α (momentum 0.5 makes it ≤ 2 % later)
PROBES = 3  # start epochs probed: 0, T⁺ // 2 and T⁺ − 1 (distinct ones)


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """SGD steps of one expert epoch: ⌈n / batch⌉ (at least 1)."""
    return max(1, math.ceil(train_size / batch_size))


def teacher_lr(expert_lr: float, expert_epochs: int, epoch_steps: int, syn_steps: int) -> float:
    """α₀ = η · min(1, M·S / N): the student's N steps go no farther than the expert's M·S."""
    return expert_lr * min(1.0, expert_epochs * epoch_steps / syn_steps)


def lr_lr_from_gradient(alpha: float, grad_alpha: float, step: float = ALPHA_STEP) -> float:
    """ρ · α / |∂L/∂α|: the learning rate whose first step changes α by ``step`` of itself."""
    return step * alpha / abs(grad_alpha)


def probe_epochs(max_start_epoch: int, count: int = PROBES) -> tuple[int, ...]:
    """Distinct start epochs spread over 0 … T⁺−1: (0, T⁺ // 2, T⁺ − 1) for ``count`` 3."""
    last = max_start_epoch - 1
    if count <= 1 or last == 0:
        return (0,)
    return tuple(sorted({round(k * last / (count - 1)) for k in range(count)}))


@dataclass(frozen=True)
class Probe:
    """The first iteration's gradients at the initial state, averaged over the probes."""

    grad_alpha: float  # mean |∂L/∂α|
    grad_images_rms: float  # mean RMS of ∂L/∂X
    loss: float  # mean matching loss
    probes: int


def probe(
    student: Any,
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    images: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    *,
    syn_steps: int,
    batch_syn: int | None,
    eps: float,
    unroll: str,
    generator: torch.Generator,
) -> Probe:
    """Gradients of the matching loss at (``images``, α) for each (θ_i, θ_{i+M}) of ``pairs``."""
    grads_alpha, grads_images, losses = [], [], []
    for start, target in pairs:
        x = images.detach().clone().requires_grad_(True)
        lr = torch.tensor(alpha, dtype=torch.float32, device=x.device, requires_grad=True)
        steps = plan_unroll(
            len(labels), syn_steps, batch_syn, student.dsa, tuple(x.shape[-2:]), generator
        )
        result = match(student, start, target, x, labels, lr, steps, eps, unroll)
        if not math.isfinite(result.loss) or lr.grad is None:
            continue
        grads_alpha.append(abs(float(lr.grad)))
        grads_images.append(float(x.grad.pow(2).mean().sqrt()))
        losses.append(result.loss)
    if not losses:
        return Probe(math.nan, math.nan, math.nan, 0)
    count = len(losses)
    return Probe(sum(grads_alpha) / count, sum(grads_images) / count, sum(losses) / count, count)


def calibrate(setup: Any) -> tuple[Any, dict[str, str]]:
    """``setup`` (a :class:`~ddpp_cli.engine.distill.setup.RunSetup` before its first iteration)
    with its config's open (None) ``lr_teacher`` and ``lr_lr`` filled, and how each was derived
    (``derived: …``, for the settings table)."""
    from ddpp_cli.engine.distill.step import read_snapshots  # distill imports this module

    config = setup.config
    derived: dict[str, str] = {}
    if config.lr_teacher is None:
        manifest = setup.manifest  # None without a buffer: the defaults below
        expert_lr = float(manifest.lr if manifest and manifest.lr is not None else 0.01)
        batch = int(manifest.batch_size if manifest and manifest.batch_size is not None else 256)
        size = int(manifest.data.train_size or 0) if manifest else 0
        size = size or len(setup.prepared.train.labels)
        epoch_steps = steps_per_epoch(size, batch)
        value = teacher_lr(expert_lr, config.expert_epochs, epoch_steps, config.syn_steps)
        config = replace(config, lr_teacher=value)
        derived["lr_teacher"] = (
            f"derived: expert lr {expert_lr:g} × min(1, M·S/N = {config.expert_epochs}·"
            f"{epoch_steps}/{config.syn_steps})"
        )
    if config.lr_lr is None:
        start = replace(setup, config=replace(config, lr_lr=0.0)).fresh_state()
        expert = setup.expert_paths[sorted(setup.expert_paths)[0]]
        pairs = [
            tuple(t.to(setup.device) for t in read_snapshots(expert, (e, e + config.expert_epochs)))
            for e in probe_epochs(config.max_start_epoch)
        ]
        found = probe(
            setup.student, pairs, start.images, setup.labels, config.lr_teacher,
            syn_steps=config.syn_steps, batch_syn=config.batch_syn, eps=config.eps,
            unroll=config.unroll, generator=make_generator(config.seed, "probe"),
        )  # fmt: skip
        if found.probes and math.isfinite(found.grad_alpha) and found.grad_alpha > 0:
            value = lr_lr_from_gradient(config.lr_teacher, found.grad_alpha)
            derived["lr_lr"] = (
                f"derived: {ALPHA_STEP:g}·α₀/|∂L/∂α|, |∂L/∂α| = {found.grad_alpha:.3g} "
                f"(loss {found.loss:.3g}, {found.probes} probes)"
            )
        else:
            value = 0.0
            derived["lr_lr"] = "derived: 0, a fixed α (no finite ∂L/∂α at the start)"
        config = replace(config, lr_lr=value)
    return replace(setup, config=config), derived


def divergence_advice(lr: float, config: Any) -> str:
    """What to change after a divergence: ``--lr-lr`` when α crossed zero, else the image lr."""
    if math.isfinite(lr) and lr <= 0 and config.lr_lr > 0:
        return (
            f"α's own learning rate --lr-lr (now {config.lr_lr:g}) stepped it below zero; try "
            f"--lr-lr {config.lr_lr / 10:g} (or leave --lr-lr unset to derive it from the "
            "first gradient) and start a new run."
        )
    return (
        f"Lower --lr-img (now {config.lr_img:g}) or --lr-teacher (now {config.lr_teacher:g}) and "
        "start a new run."
    )
