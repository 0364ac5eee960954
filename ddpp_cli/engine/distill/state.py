"""The state of a distillation run as one type, :class:`DistillState`, with a symmetric
``state_dict()`` / ``from_state_dict()`` pair: what ``checkpoint.safetensors`` holds.

The checkpoint's tensors: ``images`` [K·IPC, C, H, W], ``lr`` [1] (α), ``expert_order`` [E],
``momentum_images`` / ``momentum_lr`` (the SGD momentum buffers, through the optimizers' own
``state_dict()``; absent before the first step) and ``rng_experts`` / ``rng_start`` /
``rng_unroll`` (generator states). Its metadata: ``iteration``, ``expert_position``,
``experts``, ``best_iteration``, ``best_val_accuracy`` and ``elapsed_seconds``.

The other methods (dc, dsa, dm, cafe) learn no step size and use no experts: their state has no
``lr``, ``momentum_lr`` or ``expert_order`` (empty ``experts``), and one generator,
``rng_matching`` (real batches, DSA draws, the inner loops' shuffles); each iteration's network
is initialised from a seed derived from (seed, iteration), so it needs no state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ddpp_cli.engine.device import make_generator

# The streams of a run from a buffer (tm's record's ``generators``): the expert order, the start
# epochs, and minibatches + DSA draws.
GENERATORS = ("experts", "start", "unroll")


@dataclass
class Best:
    """The best validation so far (both None before the first validation)."""

    iteration: int | None = None
    accuracy: float | None = None

    def improved_by(self, accuracy: float) -> bool:
        return self.accuracy is None or accuracy > self.accuracy


@dataclass
class StateDict:
    """A consistent copy of a :class:`DistillState`: checkpoint tensors and metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.meta["iteration"])

    @property
    def images(self) -> torch.Tensor:
        return self.tensors["images"]

    @property
    def lr(self) -> float | None:
        """The learned step size; None for a method that learns none."""
        return float(self.tensors["lr"][0]) if "lr" in self.tensors else None


@dataclass
class DistillState:
    """Everything that changes during a run: the synthetic images X and the learned step size α
    (leaves with gradients, on the run's device), their SGD optimizers (momentum 0.5), the named
    CPU generators, the expert order and position, the iteration, the best validation so far
    and the seconds spent."""

    images: torch.Tensor
    lr: torch.Tensor | None  # None: a method that learns no step size
    opt_images: torch.optim.SGD
    opt_lr: torch.optim.SGD | None
    generators: dict[str, torch.Generator]
    experts: list[int]
    order: torch.Tensor
    position: int = 0
    iteration: int = 0
    best: Best = field(default_factory=Best)
    elapsed: float = 0.0

    @classmethod
    def create(
        cls,
        images: torch.Tensor,
        lr: torch.Tensor | float | None,
        *,
        lr_img: float,
        lr_lr: float | None,
        device: torch.device,
        **rest: Any,
    ) -> DistillState:
        """A state whose images and α (None: no learned step size) are fresh leaves on
        ``device`` with new optimizers (SGD, momentum 0.5)."""
        x = images.to(device, torch.float32).detach().clone().requires_grad_(True)
        opt_images = torch.optim.SGD([x], lr=lr_img, momentum=0.5)
        alpha, opt_lr = None, None
        if lr is not None:
            alpha = torch.as_tensor(lr, dtype=torch.float32).to(device).reshape(()).detach()
            alpha = alpha.clone().requires_grad_(True)
            opt_lr = torch.optim.SGD([alpha], lr=lr_lr, momentum=0.5)
        return cls(images=x, lr=alpha, opt_images=opt_images, opt_lr=opt_lr, **rest)

    @classmethod
    def start_method(
        cls,
        images: torch.Tensor,
        *,
        seed: int,
        lr_img: float,
        device: torch.device,
        streams: tuple[str, ...],
    ) -> DistillState:
        """Iteration 0 of a method without experts or learned step size (dc, dsa, dm, cafe),
        with new generators ``streams`` (its record's ``generators``)."""
        generators = {name: make_generator(seed, name) for name in streams}
        return cls.create(
            images, None, lr_img=lr_img, lr_lr=None, device=device, generators=generators,
            experts=[], order=torch.zeros(0, dtype=torch.long),
        )  # fmt: skip

    @property
    def learned_lr(self) -> float | None:
        """α as a number; None for a method that learns no step size."""
        return None if self.lr is None else float(self.lr.detach())

    @classmethod
    def start(
        cls,
        images: torch.Tensor,
        lr: float,
        experts: list[int],
        *,
        seed: int,
        lr_img: float,
        lr_lr: float,
        device: torch.device,
    ) -> DistillState:
        """Iteration 0: new generators from ``seed`` and a first shuffled expert order."""
        generators = {name: make_generator(seed, name) for name in GENERATORS}
        experts = sorted(experts)
        shuffle = torch.randperm(len(experts), generator=generators["experts"])
        return cls.create(
            images, lr, lr_img=lr_img, lr_lr=lr_lr, device=device,
            generators=generators, experts=experts, order=torch.tensor(experts)[shuffle],
        )  # fmt: skip

    def next_expert(self) -> int:
        """The next expert of the shuffled order; a new order once all were used."""
        if self.position >= len(self.order):
            experts = torch.tensor(self.experts)
            self.order = experts[torch.randperm(len(experts), generator=self.generators["experts"])]
            self.position = 0
        expert = int(self.order[self.position])
        self.position += 1
        return expert

    def zero_grad(self) -> None:
        self.opt_images.zero_grad(set_to_none=True)
        if self.opt_lr is not None:
            self.opt_lr.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        self.opt_images.step()
        if self.opt_lr is not None:
            self.opt_lr.step()

    def state_dict(self) -> StateDict:
        """A copy of the state (cheap: images, α and momentum are cloned on the device)."""
        tensors = {
            "images": self.images.detach().clone(),
            **_momentum_tensors(self.opt_images, "images"),
        }
        if self.lr is not None:
            tensors["lr"] = self.lr.detach().reshape(1).clone()
            tensors["expert_order"] = self.order.clone()
            tensors.update(_momentum_tensors(self.opt_lr, "lr"))
        for name, generator in self.generators.items():
            tensors[f"rng_{name}"] = generator.get_state()
        meta = {
            "iteration": self.iteration,
            "expert_position": self.position,
            "experts": list(self.experts),
            "best_iteration": self.best.iteration,
            "best_val_accuracy": self.best.accuracy,
            "elapsed_seconds": self.elapsed,
        }
        return StateDict(tensors, meta)

    @classmethod
    def from_state_dict(
        cls,
        saved: StateDict,
        *,
        lr_img: float,
        lr_lr: float | None,
        device: torch.device,
    ) -> DistillState:
        """The state :meth:`state_dict` copied (on ``device``, with the given optimizer lrs);
        its generators are the ``rng_*`` tensors it holds."""
        tensors, meta = saved.tensors, saved.meta
        generators = {}
        for key in sorted(k for k in tensors if k.startswith("rng_")):
            name = key.removeprefix("rng_")
            generators[name] = torch.Generator(device="cpu")
            generators[name].set_state(tensors[key].to(torch.uint8))
        order = tensors.get("expert_order", torch.zeros(0, dtype=torch.long))
        state = cls.create(
            tensors["images"], tensors.get("lr"), lr_img=lr_img, lr_lr=lr_lr, device=device,
            generators=generators, experts=[int(e) for e in meta["experts"]],
            order=order.long().cpu(), position=int(meta["expert_position"]),
            iteration=int(meta["iteration"]),
            best=Best(meta.get("best_iteration"), meta.get("best_val_accuracy")),
            elapsed=float(meta.get("elapsed_seconds") or 0.0),
        )  # fmt: skip
        _load_momentum(state.opt_images, tensors, "images")
        if state.opt_lr is not None:
            _load_momentum(state.opt_lr, tensors, "lr")
        return state


def _momentum_tensors(optimizer: torch.optim.SGD, name: str) -> dict[str, torch.Tensor]:
    """``{"momentum_<name>": buffer}`` from the optimizer's ``state_dict()`` (one parameter);
    empty before its first step. A scalar's buffer is stored with shape [1]."""
    buffer = optimizer.state_dict()["state"].get(0, {}).get("momentum_buffer")
    if buffer is None:
        return {}
    buffer = buffer.detach().clone()
    return {f"momentum_{name}": buffer.reshape(1) if buffer.ndim == 0 else buffer}


def _load_momentum(
    optimizer: torch.optim.SGD, tensors: Mapping[str, torch.Tensor], name: str
) -> None:
    """Give ``optimizer`` the buffer ``momentum_<name>`` through ``load_state_dict()``."""
    buffer = tensors.get(f"momentum_{name}")
    if buffer is None:
        return
    current = optimizer.state_dict()  # keeps this run's param groups (lr, momentum)
    param = optimizer.param_groups[0]["params"][0]
    buffer = buffer.reshape(param.shape).clone()
    optimizer.load_state_dict({**current, "state": {0: {"momentum_buffer": buffer}}})
