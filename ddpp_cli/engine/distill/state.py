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

A method whose record names Adam (kip) keeps Adam's state instead of the momentum buffers:
``adam_images_step`` / ``adam_images_exp_avg`` / ``adam_images_exp_avg_sq``; one that learns
label vectors (kip with ``--learn-labels``) also ``targets`` [K·IPC, K] and their
``adam_targets_*``; tm with ``--labels learned`` holds ``targets`` and ``momentum_targets``
(SGD, momentum 0.9). The checkpoints of the other methods are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ddpp_cli.engine.device import make_generator

# The images' optimizers a method's record may name (``MethodInfo.optimizer``); "sgd-0.9" is
# DATM's for learned labels (SGD, momentum 0.9: ``Momentum_y``).
OPTIMIZERS = ("sgd", "adam", "sgd-0.9")
LABEL_OPTIMIZER = "sgd-0.9"  # tm's learned labels (--labels learned)
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

    @property
    def targets(self) -> torch.Tensor | None:
        """The learned label vectors; None for a method that learns none."""
        return self.tensors.get("targets")


@dataclass
class DistillState:
    """Everything that changes during a run: the synthetic images X and the learned step size α
    (leaves with gradients, on the run's device), their optimizers (SGD with momentum 0.5, or
    Adam where the method's record says so), the named CPU generators, the expert order and
    position, the iteration, the best validation so far, the seconds spent, and the learned
    label vectors with their optimizer (kip with ``--learn-labels``; else None)."""

    images: torch.Tensor
    lr: torch.Tensor | None  # None: a method that learns no step size
    opt_images: torch.optim.Optimizer
    opt_lr: torch.optim.SGD | None
    generators: dict[str, torch.Generator]
    experts: list[int]
    order: torch.Tensor
    position: int = 0
    iteration: int = 0
    best: Best = field(default_factory=Best)
    elapsed: float = 0.0
    targets: torch.Tensor | None = None  # learned label vectors [N, K]
    opt_targets: torch.optim.Optimizer | None = None

    @classmethod
    def create(
        cls,
        images: torch.Tensor,
        lr: torch.Tensor | float | None,
        *,
        lr_img: float,
        lr_lr: float | None,
        device: torch.device,
        optimizer: str = "sgd",
        targets: torch.Tensor | None = None,
        lr_targets: float | None = None,
        targets_optimizer: str | None = None,
        **rest: Any,
    ) -> DistillState:
        """A state whose images, α (None: no learned step size) and label vectors (None: none
        learned) are fresh leaves on ``device`` with new optimizers: the images' ``optimizer``
        (SGD with momentum 0.5, or Adam, as are the label vectors'), α's SGD."""
        x = images.to(device, torch.float32).detach().clone().requires_grad_(True)
        opt_images = _optimizer(optimizer, x, lr_img)
        y, opt_targets = None, None
        if targets is not None:
            y = targets.to(device, torch.float32).detach().clone().requires_grad_(True)
            opt_targets = _optimizer(targets_optimizer or optimizer, y, lr_targets)
        alpha, opt_lr = None, None
        if lr is not None:
            alpha = torch.as_tensor(lr, dtype=torch.float32).to(device).reshape(()).detach()
            alpha = alpha.clone().requires_grad_(True)
            opt_lr = torch.optim.SGD([alpha], lr=lr_lr, momentum=0.5)
        return cls(
            images=x, lr=alpha, opt_images=opt_images, opt_lr=opt_lr, targets=y,
            opt_targets=opt_targets, **rest,
        )  # fmt: skip

    @classmethod
    def start_method(
        cls,
        images: torch.Tensor,
        *,
        seed: int,
        lr_img: float,
        device: torch.device,
        streams: tuple[str, ...],
        optimizer: str = "sgd",
        targets: torch.Tensor | None = None,
        lr_targets: float | None = None,
    ) -> DistillState:
        """Iteration 0 of a method without experts or learned step size (dc, dsa, dm, cafe,
        kip), with new generators ``streams`` (its record's ``generators``), its images'
        ``optimizer`` and, when it learns them, the initial label vectors ``targets``."""
        generators = {name: make_generator(seed, name) for name in streams}
        return cls.create(
            images, None, lr_img=lr_img, lr_lr=None, device=device, generators=generators,
            experts=[], order=torch.zeros(0, dtype=torch.long), optimizer=optimizer,
            targets=targets, lr_targets=lr_targets,
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
        targets: torch.Tensor | None = None,
        lr_targets: float | None = None,
    ) -> DistillState:
        """Iteration 0: new generators from ``seed`` and a first shuffled expert order; with
        ``targets``, learned label vectors (SGD with momentum 0.9 at ``lr_targets``)."""
        generators = {name: make_generator(seed, name) for name in GENERATORS}
        experts = sorted(experts)
        shuffle = torch.randperm(len(experts), generator=generators["experts"])
        return cls.create(
            images, lr, lr_img=lr_img, lr_lr=lr_lr, device=device,
            generators=generators, experts=experts, order=torch.tensor(experts)[shuffle],
            targets=targets, lr_targets=lr_targets, targets_optimizer=LABEL_OPTIMIZER,
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
        if self.opt_targets is not None:
            self.opt_targets.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        self.opt_images.step()
        if self.opt_lr is not None:
            self.opt_lr.step()
        if self.opt_targets is not None:
            self.opt_targets.step()

    def state_dict(self) -> StateDict:
        """A copy of the state (cheap: images, α and momentum are cloned on the device)."""
        tensors = {
            "images": self.images.detach().clone(),
            **_optimizer_tensors(self.opt_images, "images"),
        }
        if self.targets is not None:
            tensors["targets"] = self.targets.detach().clone()
            tensors.update(_optimizer_tensors(self.opt_targets, "targets"))
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
        optimizer: str = "sgd",
        lr_targets: float | None = None,
        targets_optimizer: str | None = None,
    ) -> DistillState:
        """The state :meth:`state_dict` copied (on ``device``, with the given optimizer and
        lrs); its generators are the ``rng_*`` tensors it holds."""
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
            elapsed=float(meta.get("elapsed_seconds") or 0.0), optimizer=optimizer,
            targets=tensors.get("targets"), lr_targets=lr_targets,
            targets_optimizer=targets_optimizer,
        )  # fmt: skip
        _load_optimizer(state.opt_images, tensors, "images")
        if state.opt_lr is not None:
            _load_momentum(state.opt_lr, tensors, "lr")
        if state.opt_targets is not None:
            _load_optimizer(state.opt_targets, tensors, "targets")
        return state


def _optimizer(kind: str, leaf: torch.Tensor, lr: float | None) -> torch.optim.Optimizer:
    """The optimizer ``kind`` (:data:`OPTIMIZERS`) of one leaf: SGD with momentum 0.5, or Adam
    with PyTorch's defaults (β 0.9, 0.999; ε 1e-8: those of KIP's ``optimizers.adam``)."""
    if kind == "adam":
        return torch.optim.Adam([leaf], lr=lr)
    if kind == "sgd":
        return torch.optim.SGD([leaf], lr=lr, momentum=0.5)
    if kind == "sgd-0.9":
        return torch.optim.SGD([leaf], lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {kind!r} (one of {OPTIMIZERS})")


_ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")


def _optimizer_tensors(optimizer: torch.optim.Optimizer, name: str) -> dict[str, torch.Tensor]:
    """The state of one leaf's optimizer as checkpoint tensors: SGD's momentum buffer
    (:func:`_momentum_tensors`), or Adam's ``adam_<name>_<key>`` (its step stored as [1])."""
    if isinstance(optimizer, torch.optim.SGD):
        return _momentum_tensors(optimizer, name)
    state = optimizer.state_dict()["state"].get(0, {})
    return {
        f"adam_{name}_{key}": torch.as_tensor(state[key])
        .detach()
        .clone()
        .reshape(1 if key == "step" else state[key].shape)
        for key in _ADAM_KEYS
        if key in state
    }


def _load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], name: str
) -> None:
    """Give ``optimizer`` the state :func:`_optimizer_tensors` saved (none before a step)."""
    if isinstance(optimizer, torch.optim.SGD):
        _load_momentum(optimizer, tensors, name)
        return
    saved = {key: tensors.get(f"adam_{name}_{key}") for key in _ADAM_KEYS}
    if any(value is None for value in saved.values()):
        return
    current = optimizer.state_dict()
    param = optimizer.param_groups[0]["params"][0]
    state = {
        "step": saved["step"].reshape(()).clone().float(),
        "exp_avg": saved["exp_avg"].reshape(param.shape).clone(),
        "exp_avg_sq": saved["exp_avg_sq"].reshape(param.shape).clone(),
    }
    optimizer.load_state_dict({**current, "state": {0: state}})


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
