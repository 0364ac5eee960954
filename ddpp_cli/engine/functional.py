"""Flat-parameter form of a model: one 1-D tensor ↔ named parameters, via ``torch.func``.

Trajectory matching treats a network's parameters as one vector θ: experts are saved as
snapshots of θ, the student unroll computes θ̃_{j+1} = θ̃_j − α ∇ℓ(θ̃_j) with the graph kept, and
pruning masks are elementwise over θ. ``ParamLayout`` fixes the order and shapes (those of
``model.named_parameters()``), and ``functional_forward`` runs the unchanged module with its
parameters replaced by views into θ (``torch.func.functional_call``), so gradients flow back into
θ, including second-order ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ddpp_cli.engine.errors import DdppError


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a model's parameters, in ``named_parameters()`` order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError(f"{len(self.names)} names but {len(self.shapes)} shapes")
        if len(set(self.names)) != len(self.names):
            raise ValueError("parameter names must be unique")

    @classmethod
    def of(cls, model: nn.Module) -> ParamLayout:
        """The layout of ``model``'s parameters."""
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each parameter."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    def flatten(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``params`` (name → tensor) in layout order into one 1-D tensor."""
        pieces = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            if name not in params:
                raise DdppError(f"parameter '{name}' is missing; expected shape {_fmt(shape)}.")
            value = params[name]
            if tuple(value.shape) != shape:
                raise DdppError(
                    f"parameter '{name}' has shape {_fmt(tuple(value.shape))}; "
                    f"expected {_fmt(shape)}."
                )
            pieces.append(value.reshape(-1))
        return torch.cat(pieces) if pieces else torch.empty(0)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``flat`` into name → tensor; the tensors are differentiable views, not copies."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise DdppError(
                f"a flat parameter vector of shape {_fmt(tuple(flat.shape))} does not fit a "
                f"layout of {self.numel} parameters; expected shape ({self.numel},)."
            )
        pieces = torch.split(flat, self.sizes)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def to_json(self) -> list[list[Any]]:
        """``[[name, [dim, ...]], ...]``, for file metadata."""
        return [[name, list(shape)] for name, shape in zip(self.names, self.shapes, strict=True)]

    @classmethod
    def from_json(cls, data: Any) -> ParamLayout:
        """Inverse of ``to_json``; DdppError on anything malformed."""
        bad = DdppError(
            "the parameter layout in this file is malformed: expected a list of "
            "[name, [dim, ...]] pairs. The file may be damaged or not written by ddpp."
        )
        if not isinstance(data, list):
            raise bad
        names, shapes = [], []
        for entry in data:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
                raise bad
            name, shape = entry
            if not isinstance(name, str) or not isinstance(shape, (list, tuple)):
                raise bad
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise bad
            names.append(name)
            shapes.append(tuple(shape))
        try:
            return cls(tuple(names), tuple(shapes))
        except ValueError:
            raise bad from None

    def check_compatible(self, other: ParamLayout, what: str) -> None:
        """Raise DdppError naming the first difference between ``other`` and this layout.

        ``self`` is the layout expected (usually the model's); ``other`` comes from ``what``,
        e.g. ``"buffer 'runs/buffer.json'"``.
        """
        hint = (
            " Was it made with another architecture, number of channels or classes, or image "
            "size? Use the same ones."
        )
        mine = list(zip(self.names, self.shapes, strict=True))
        theirs = list(zip(other.names, other.shapes, strict=True))
        for i, (expected, found) in enumerate(zip(mine, theirs, strict=False)):
            if expected != found:
                raise DdppError(
                    f"{what} does not match the model: parameter {i} is '{found[0]}' of shape "
                    f"{_fmt(found[1])} there, but the model expects '{expected[0]}' of shape "
                    f"{_fmt(expected[1])}." + hint
                )
        if len(mine) != len(theirs):
            first = (mine if len(mine) > len(theirs) else theirs)[min(len(mine), len(theirs))]
            raise DdppError(
                f"{what} does not match the model: it has {len(theirs)} parameter tensors but "
                f"the model has {len(mine)} (first unmatched: '{first[0]}')." + hint
            )


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """A detached 1-D copy of ``model``'s parameters, in layout order."""
    pieces = [p.detach().reshape(-1) for p in model.parameters()]
    return torch.cat(pieces) if pieces else torch.empty(0)


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy the values of ``flat`` into ``model``'s parameters in place (no autograd)."""
    values = ParamLayout.of(model).unflatten(flat.detach())
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(values[name])


def functional_forward(
    model: nn.Module, layout: ParamLayout, flat: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """``model(x)`` with its parameters taken from ``flat``; differentiable w.r.t. ``flat``.

    Buffers (BatchNorm running statistics) are the module's own; in training mode BatchNorm
    updates them in place as an ordinary forward would.
    """
    tensors = {**layout.unflatten(flat), **dict(model.named_buffers())}
    return functional_call(model, tensors, (x,), strict=True)
