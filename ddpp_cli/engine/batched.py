"""Many networks of one architecture trained at once as one batched model (``torch.func``).

``StackedNetworks`` stacks K networks' parameters and buffers along a new leading dimension
(``stack_module_state``) and runs them with ``vmap(functional_call)``, so one forward/backward
and one SGD step serve all K. Each member keeps its own data order and DSA draws: the batches are
drawn and augmented per member, exactly as :func:`training.train_epoch` would for that member
alone, and only then stacked. Because SGD is elementwise, one ``torch.optim.SGD`` over the
stacked tensors updates every member exactly as its own optimiser would; the per-member losses
are summed before ``backward`` so each member gets its own gradient. BatchNorm works too: its
running statistics are stacked buffers that vmap updates per member.

The result per member equals sequential training to float tolerance (the batched convolution is a
grouped convolution, which rounds differently), not bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.training import LabelVectors, min_batch_size, minibatches

PREDICT_BATCH = 1024  # images per forward pass, shared by all members


def check_parallel(parallel: int) -> int:
    """``parallel`` if it is a valid number of networks to train at once, else a DdppError."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise DdppError(f"--parallel must be a whole number of at least 1 (got {parallel!r}).")
    return parallel


def groups(items: Sequence[int], size: int) -> list[list[int]]:
    """``items`` in consecutive groups of ``size`` (the last one may be smaller)."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class StackedNetworks:
    """K networks of one architecture as one functional model with stacked state.

    ``params`` and ``buffers`` map the module's names to tensors of shape ``(K, *shape)``;
    the parameters are leaf tensors that require grad. Call with ``(K, B, ...)`` inputs (one batch
    per member) or use :meth:`shared` for one batch seen by every member.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        if not networks:
            raise ValueError("StackedNetworks needs at least one network")
        self.size = len(networks)
        self.params, self.buffers = stack_module_state(list(networks))
        self.template = copy.deepcopy(networks[0]).to("meta")
        self.min_batch = min_batch_size(networks[0])

    def train(self, mode: bool = True) -> StackedNetworks:
        self.template.train(mode)
        return self

    def eval(self) -> StackedNetworks:
        return self.train(False)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameter tensors, in ``named_parameters()`` order (for an optimiser)."""
        return list(self.params.values())

    def _forward(
        self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` of member k on ``x[k]`` for ``x`` of shape ``(K, B, ...)``."""
        return vmap(self._forward)(self.params, self.buffers, x)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` of every member on the same batch ``x`` ``(B, ...)``."""
        return vmap(self._forward, in_dims=(0, 0, None))(self.params, self.buffers, x)

    def flat(self) -> torch.Tensor:
        """Detached ``(K, P)`` parameters, each row in the flat layout of one network."""
        return torch.cat([p.detach().reshape(self.size, -1) for p in self.params.values()], dim=1)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """A copy of member ``k``'s parameters and buffers."""
        state = {**self.params, **self.buffers}
        return {name: t[k].detach().clone() for name, t in state.items()}

    @torch.no_grad()
    def load_member_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Put ``state`` (from :meth:`member_state`) back into member ``k``."""
        for name, tensor in {**self.params, **self.buffers}.items():
            tensor[k].copy_(state[name])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
        """Predicted class ``(K, N)`` of every member for every image (evaluation mode)."""
        self.eval()
        chunk = max(1, batch_size // self.size)  # keep the activations of all K members bounded
        return torch.cat([self.shared(c).argmax(dim=2) for c in images.split(chunk)], dim=1)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
        """Fraction of ``images`` each member classifies as ``labels``."""
        if len(images) == 0:
            return [float("nan")] * self.size
        return (self.predict(images) == labels).float().mean(dim=1).tolist()


def train_epoch(
    stacked: StackedNetworks,
    sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    dsa: DSA,
    generators: Sequence[torch.Generator],
    vectors: LabelVectors | None = None,
) -> list[float]:
    """One epoch for every member; member k trains on ``sets[k]`` with ``generators[k]``.

    Member k draws its batch order and DSA parameters from ``generators[k]`` in the same order as
    :func:`training.train_epoch`; returns the mean training loss of each member. ``vectors``
    (label vectors of rows like every member's set) replace cross-entropy on the labels by
    their loss, each member's targets taken with its own batch's indices.
    """
    if not len(sets) == len(generators) == stacked.size:
        raise ValueError("one (images, labels) set and one generator per member are needed")
    sizes = {len(images) for images, _ in sets}
    if len(sizes) != 1:
        raise ValueError(f"all members must train on sets of one size (got {sorted(sizes)})")
    stacked.train()
    (n,) = sizes
    orders = [list(minibatches(n, batch_size, g, stacked.min_batch)) for g in generators]
    total = torch.zeros(stacked.size, device=sets[0][0].device)
    count = 0
    for step in range(len(orders[0])):
        xs, ys, indices = [], [], []
        for (images, labels), order, generator in zip(sets, orders, generators, strict=True):
            index = order[step].to(images.device)
            batch = images[index]
            if dsa.enabled:
                batch = dsa(batch, generator)
            xs.append(batch)
            ys.append(labels[index])
            indices.append(index)
        x, y = torch.stack(xs), torch.stack(ys)
        logits = stacked(x)
        if vectors is None:
            losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)
        else:
            targets = vectors.vectors[torch.stack(indices).to(vectors.vectors.device)]
            losses = vectors.loss_of(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        total += losses.detach() * y.shape[1]  # stays on the device: no sync per step
        count += y.shape[1]
    return (total / max(count, 1)).tolist()
