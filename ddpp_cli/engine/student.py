"""The student of trajectory matching: the network as a pure function of θ, and its steps' draws.

θ is the network's flat parameter vector; each unroll step draws a minibatch of the images and
its DSA parameters (:func:`plan_unroll`) before the unroll starts.

:class:`Student` holds the network with the execution options that do not change the maths: bf16
autocast for the network's forward, ``torch.compile`` of the per-step gradient, and channels-last
activations. Across ranks (``Student(world=...)``, under torchrun) it gives this rank's
contiguous share of each step's minibatch and its part of the step's gradient
(:mod:`ddpp_cli.engine.unroll` says how the parts add up; docs/parallel.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddpp_cli.engine.augment import DSA, DSAParams
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.functional import ParamLayout, functional_forward
from ddpp_cli.engine.training import soft_cross_entropy

AMP_MODES = ("off", "bf16")
COMPILE_BACKEND = "inductor"  # tests swap in "aot_eager", which traces the same but skips codegen

NoticeCallback = Callable[[str], None]


@dataclass(frozen=True)
class UnrollStep:
    """One student step's draws: minibatch indices into X (None = all) and its DSA draw."""

    indices: torch.Tensor | None
    augment: DSAParams

    def batch(self, num_images: int) -> int:
        """The minibatch's size B (``num_images`` when it is all of X)."""
        return num_images if self.indices is None else int(self.indices.numel())


def plan_unroll(
    num_images: int,
    syn_steps: int,
    batch_syn: int | None,
    dsa: DSA,
    image_size: tuple[int, int],
    generator: torch.Generator,
) -> list[UnrollStep]:
    """Draw the minibatches (shuffled chunks of X, as MTT) and DSA parameters of N steps.

    Drawing everything first keeps the unroll a pure function of its inputs, so the memory mode
    can replay the same steps in its reverse pass.
    """
    height, width = image_size
    steps: list[UnrollStep] = []
    chunks: list[torch.Tensor] = []
    for _ in range(syn_steps):
        if batch_syn is None or batch_syn >= num_images:
            indices, batch = None, num_images
        else:
            if not chunks:
                chunks = list(torch.randperm(num_images, generator=generator).split(batch_syn))
            indices = chunks.pop(0)
            batch = int(indices.numel())
        params = dsa.sample(batch, height, width, generator) if dsa.enabled else DSAParams("none")
        steps.append(UnrollStep(indices, params))
    return steps


# ------------------------------------------------------------------------- the student


def label_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE against class indices ``y``, or soft CE at temperature 1 against label vectors."""
    if y.is_floating_point():
        return soft_cross_entropy(logits, y, 1.0)
    return F.cross_entropy(logits, y)


class Student:
    """The student network as a pure function of a flat parameter vector θ.

    ``amp="bf16"`` runs the network's forward under ``torch.autocast`` (bf16); the loss, the
    gradient g, the parameter updates, the mask and the matching loss stay in float32.
    ``compile`` wraps the per-step gradient in ``torch.compile``; if compiling fails, the
    student reports it once through ``on_notice`` and runs eagerly. ``channels_last`` passes the
    augmented images in channels-last memory format (convolutions keep it). ``world`` (under
    torchrun) makes :meth:`inputs` this rank's share of each minibatch (see the module notes).
    """

    def __init__(
        self,
        model: nn.Module,
        layout: ParamLayout,
        dsa: DSA,
        *,
        amp: str = "off",
        compile: bool = False,
        channels_last: bool = False,
        on_notice: NoticeCallback | None = None,
        world: World | None = None,
    ) -> None:
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
        self.model = model
        self.layout = layout
        self.dsa = dsa
        self.amp = amp
        self.channels_last = channels_last
        self.world = world or World()
        self.on_notice = on_notice or (lambda message: None)
        self._compiled: Callable[..., torch.Tensor] | None = None
        if compile:
            self._compiled = torch.compile(self._functional_gradient, backend=COMPILE_BACKEND)

    # -- the maths --------------------------------------------------------------------------

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CE(f(x; θ), y), the network under autocast when ``amp`` asks, the loss in float32.

        ``y`` holds class indices, or label vectors (float, [B, K]: logits, as DATM's): then the
        loss is soft cross-entropy at temperature 1 against softmax(y) (DATM's
        ``SoftCrossEntropy``), differentiable w.r.t. ``y`` too."""
        if self.amp == "off":
            return label_loss(functional_forward(self.model, self.layout, theta, x), y)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            logits = functional_forward(self.model, self.layout, theta, x)
        return label_loss(logits.to(theta.dtype), y)

    def inputs(self, images: torch.Tensor, labels: torch.Tensor, step: UnrollStep) -> tuple:
        """The step's augmented minibatch A_j(b_j) (differentiable w.r.t. ``images``) and labels;
        across ranks, this rank's contiguous share of it (possibly empty)."""
        augment = step.augment
        if not self.world.distributed and step.indices is None:
            x, y = images, labels
        else:
            start, stop = self.world.split(step.batch(len(labels)))
            if step.indices is None:
                x, y = images[start:stop], labels[start:stop]
            else:
                index = step.indices[start:stop].to(images.device)
                x, y = images[index], labels[index]
            if self.world.distributed:
                augment = augment.rows(start, stop)
        if x.shape[0] == 0:
            return x, y
        x = self.dsa.apply(x, augment)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _functional_gradient(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return torch.func.grad(self.loss)(theta, x, y)

    def share(self, step: UnrollStep, num_images: int) -> float:
        """This rank's share (e_r − s_r) / B of the step's minibatch (1 in one process)."""
        if not self.world.distributed:
            return 1.0
        start, stop = self.world.split(step.batch(num_images))
        return (stop - start) / step.batch(num_images)

    def shard_gradient(
        self,
        theta: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        share: float,
        *,
        create_graph: bool,
    ) -> torch.Tensor:
        """This rank's part of g: ``share`` · ∇CE on its share ``x`` (zero when it is empty).

        An empty share's zero stays attached to θ and to X (through the empty ``x``): autograd
        runs a node's backward only on a path to the inputs asked for, and every rank must run
        the backward of every step's all-reduce, in the same order, or the collectives of the
        ranks no longer match."""
        if x.shape[0] == 0:
            return theta * 0.0 + x.sum() * 0.0
        grad = self.gradient(theta, x, y, create_graph=create_graph)
        return grad if share == 1.0 else grad * share

    def gradient(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool
    ) -> torch.Tensor:
        """g = ∇_θ CE(f(x; θ), y); with ``create_graph`` differentiable w.r.t. θ and x."""
        if self._compiled is not None:
            try:
                return self._compiled(theta, x, y)
            except Exception as error:  # any failure to compile: say so once, run eagerly
                self._compiled = None
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                self.on_notice(
                    f"torch.compile failed ({type(error).__name__}: {reason[:200]}); "
                    "continuing without --compile."
                )
        with torch.enable_grad():
            if not theta.requires_grad:
                theta = theta.detach().requires_grad_(True)
            loss = self.loss(theta, x, y)
            (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
        return grad


def describe(student: Student) -> dict[str, Any]:
    """The execution options in effect (for benchmark records)."""
    return {
        "amp": student.amp,
        "compile": student._compiled is not None,
        "channels_last": student.channels_last,
    }
