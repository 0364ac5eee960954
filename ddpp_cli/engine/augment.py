"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) as used by MTT/DDPP
(docs/data.md#dsa-augmentation).

Each call picks ONE op group uniformly from the strategy and applies it to the whole batch with
per-sample parameters; ``DSA.siamese`` instead applies one shared transform (same op, same
values) to several batches, as the matching methods DC/DSA, DM and CAFE need. Drawing
(``DSA.sample``) is separate from applying (``DSA.apply``): the draws are made on the CPU from a
``torch.Generator`` and can be recorded and replayed bit for bit, on any device. The ops are
small pure functions of the images and explicit parameter tensors; every one is differentiable
w.r.t. the images, free of in-place writes and Python loops over samples, and works inside
``torch.func`` transforms and ``create_graph`` backward passes.

Conventions: images are ``(B, C, H, W)``; ``shift_y``/``centre_y``/``sy`` refer to the height
axis and ``*_x`` to the width axis. Pixel counts derived from ratios round half up, as in the
reference DSA code (``int(ratio * size + 0.5)``), so e.g. 28 px gives crop shifts up to 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ddpp_cli.engine.errors import DdppError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
OPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
NONE = "none"


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` parameter (or a scalar) to broadcast against ``(B, C, H, W)`` images."""
    values = torch.as_tensor(values, device=like.device)
    if values.is_floating_point():
        values = values.to(like.dtype)
    return values.reshape(-1, 1, 1, 1)


def round_half_up(value: float) -> int:
    """``int(value + 0.5)`` for non-negative values: the reference code's rounding."""
    return math.floor(value + 0.5)


# ---------------------------------------------------------------------------------------------
# The ops: pure functions of the images and explicit per-sample parameters.
# ---------------------------------------------------------------------------------------------


def color(
    x: torch.Tensor,
    brightness: torch.Tensor,
    saturation: torch.Tensor,
    contrast: torch.Tensor,
) -> torch.Tensor:
    """Brightness, then saturation, then contrast.

    ``brightness`` is an additive offset (sampled as u − 0.5); ``saturation`` scales each pixel's
    deviation from its mean over channels (sampled as 2u); ``contrast`` scales the deviation from
    the image's mean over (C, H, W) (sampled as u + 0.5). All three are ``(B,)`` tensors.
    """
    x = x + _per_sample(brightness, x)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _per_sample(saturation, x) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_sample(contrast, x) + mean


def _shift_index(length: int, shift: torch.Tensor) -> torch.Tensor:
    """Indices into a zero-padded (by one) axis so that ``out[i] = in[i - shift]``, else zero."""
    positions = torch.arange(length, device=shift.device)
    # Index 0 and length + 1 are the zero padding; anything out of range lands on one of them.
    return (positions.unsqueeze(0) - shift.unsqueeze(1) + 1).clamp(0, length + 1)


def crop(x: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    """Translate each image by integer ``(shift_y, shift_x)`` pixels with zero fill.

    A positive ``shift_y`` moves the content down, a positive ``shift_x`` moves it right:
    ``out[b, :, i, j] = x[b, :, i - shift_y[b], j - shift_x[b]]`` (zero outside the image).
    Implemented as a one-pixel zero pad and two gathers, so it is linear in ``x``.
    """
    batch, channels, height, width = x.shape
    shift_y = torch.as_tensor(shift_y, device=x.device).long().reshape(-1)
    shift_x = torch.as_tensor(shift_x, device=x.device).long().reshape(-1)
    padded = F.pad(x, (1, 1, 1, 1))
    rows = _shift_index(height, shift_y).view(-1, 1, height, 1)
    rows = rows.expand(batch, channels, height, width + 2)
    cols = _shift_index(width, shift_x).view(-1, 1, 1, width)
    cols = cols.expand(batch, channels, height, width)
    return padded.gather(2, rows).gather(3, cols)


def _window(length: int, centre: torch.Tensor, size: torch.Tensor | int) -> torch.Tensor:
    """``(B, length)`` booleans: True on ``[centre - size // 2, centre - size // 2 + size)``."""
    positions = torch.arange(length, device=centre.device).unsqueeze(0)
    size = torch.as_tensor(size, device=centre.device).reshape(-1, 1)
    start = centre.reshape(-1, 1) - size // 2
    return (positions >= start) & (positions < start + size)


def cutout(
    x: torch.Tensor,
    centre_y: torch.Tensor,
    centre_x: torch.Tensor,
    size_y: torch.Tensor | int,
    size_x: torch.Tensor | int,
) -> torch.Tensor:
    """Zero one ``size_y × size_x`` rectangle per image, rows ``centre_y - size_y // 2`` onwards.

    The rectangle is clipped at the borders. Sizes may be ints or ``(B,)`` tensors.
    """
    height, width = x.shape[-2:]
    centre_y = torch.as_tensor(centre_y, device=x.device).long()
    centre_x = torch.as_tensor(centre_x, device=x.device).long()
    inside = _window(height, centre_y, size_y).unsqueeze(2) & _window(
        width, centre_x, size_x
    ).unsqueeze(1)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``mask`` (``(B,)`` bool) is True, left to right."""
    return torch.where(_per_sample(mask, x).bool(), x.flip(-1), x)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling with zero padding through a ``(B, 2, 3)`` affine map of the grid."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def scale(x: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """Scale the sampling grid of each image by ``sx`` (width axis) and ``sy`` (height axis).

    As in the reference DSA code, a factor above 1 samples a larger region (content shrinks).
    Scaling is about the image centre; ``sx = sy = 1`` is the identity.
    """
    sx = torch.as_tensor(sx, device=x.device, dtype=x.dtype).reshape(-1)
    sy = torch.as_tensor(sy, device=x.device, dtype=x.dtype).reshape(-1)
    zeros = torch.zeros_like(sx)
    theta = torch.stack(
        [torch.stack([sx, zeros, zeros], dim=1), torch.stack([zeros, sy, zeros], dim=1)], dim=1
    )
    return _warp(x, theta)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by ``angles`` (``(B,)``, radians).

    The rotation is a true rotation in pixel space also for non-square images (the reference code
    rotates normalised coordinates, which shears them); for square images the two agree. Positive
    angles turn the content clockwise as displayed (row 0 at the top).
    """
    height, width = x.shape[-2:]
    angles = torch.as_tensor(angles, device=x.device, dtype=x.dtype).reshape(-1)
    # affine_grid works in coordinates normalised per axis; convert the pixel-space rotation.
    aspect = max(height - 1, 1) / max(width - 1, 1)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros_like(angles)
    theta = torch.stack(
        [
            torch.stack([cos, sin * aspect, zeros], dim=1),
            torch.stack([-sin / aspect, cos, zeros], dim=1),
        ],
        dim=1,
    )
    return _warp(x, theta)


_APPLY: dict[str, Callable[..., torch.Tensor]] = {
    "color": color,
    "crop": crop,
    "cutout": cutout,
    "flip": flip,
    "scale": scale,
    "rotate": rotate,
}


# ---------------------------------------------------------------------------------------------
# The strategy: draw parameters, then apply them.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DSAParams:
    """One draw: the op chosen and its per-sample parameters (CPU tensors, keyed like the op's
    keyword arguments). ``op == "none"`` means no augmentation."""

    op: str
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, start: int, stop: int) -> DSAParams:
        """The draw of samples ``start`` … ``stop − 1`` (the ops act on each sample alone, so
        applying this to those samples equals slicing the whole batch's result)."""
        values = {
            name: value[start:stop] if value.dim() > 0 else value
            for name, value in self.values.items()
        }
        return DSAParams(self.op, values)


def broadcast(params: DSAParams, batch: int) -> DSAParams:
    """A draw of one sample's parameters repeated for ``batch`` images (one shared transform)."""
    values = {}
    for name, value in params.values.items():
        if value.dim() == 0:
            values[name] = value
            continue
        if value.shape[0] != 1:
            raise ValueError(f"DSA parameter {name!r} was drawn for {value.shape[0]} images, not 1")
        values[name] = value.expand(batch, *value.shape[1:]).clone()
    return DSAParams(params.op, values)


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """The ops named by a strategy string (``"none"`` or ``""``: no ops), or a DdppError."""
    if strategy in (NONE, ""):
        return ()
    ops = tuple(strategy.split("_"))
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise DdppError(
            f"unknown DSA op {unknown[0]!r} in strategy {strategy!r}; join any of "
            f"{', '.join(OPS)} with '_' (default {DEFAULT_STRATEGY!r}), or use 'none'."
        )
    if len(set(ops)) != len(ops):
        raise DdppError(f"DSA strategy {strategy!r} names an op twice; list each op once.")
    return ops


@dataclass(frozen=True)
class DSA:
    """A DSA strategy with the reference ratios; call it as ``dsa(x, generator)``."""

    strategy: str = DEFAULT_STRATEGY
    crop_ratio: float = 0.125
    cutout_ratio: float = 0.5
    scale_ratio: float = 1.2
    rotate_degrees: float = 15.0

    def __post_init__(self) -> None:
        parse_strategy(self.strategy)
        if not 0.0 <= self.crop_ratio <= 1.0:
            raise DdppError(f"DSA crop ratio must be in [0, 1], got {self.crop_ratio}.")
        if not 0.0 <= self.cutout_ratio <= 1.0:
            raise DdppError(f"DSA cutout ratio must be in [0, 1], got {self.cutout_ratio}.")
        if not self.scale_ratio >= 1.0:
            raise DdppError(f"DSA scale ratio must be at least 1, got {self.scale_ratio}.")
        if not 0.0 <= self.rotate_degrees <= 180.0:
            raise DdppError(f"DSA rotation must be in [0, 180] degrees, got {self.rotate_degrees}.")

    @property
    def ops(self) -> tuple[str, ...]:
        """The op groups one of which each call applies."""
        return parse_strategy(self.strategy)

    @property
    def enabled(self) -> bool:
        """False for strategy ``"none"``: calls return the images unchanged and draw nothing."""
        return bool(self.ops)

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator) -> DSAParams:
        """Draw one op and its per-sample parameters on the CPU from ``generator``."""
        ops = self.ops
        if not ops:
            return DSAParams(NONE, {})
        op = ops[int(torch.randint(len(ops), (1,), generator=generator))]

        def uniform() -> torch.Tensor:
            return torch.rand(batch, generator=generator)

        def integers(low: int, high: int) -> torch.Tensor:  # inclusive bounds
            return torch.randint(low, high + 1, (batch,), generator=generator)

        if op == "color":
            values = {
                "brightness": uniform() - 0.5,
                "saturation": uniform() * 2.0,
                "contrast": uniform() + 0.5,
            }
        elif op == "crop":
            reach_y = round_half_up(self.crop_ratio * height)
            reach_x = round_half_up(self.crop_ratio * width)
            values = {
                "shift_y": integers(-reach_y, reach_y),
                "shift_x": integers(-reach_x, reach_x),
            }
        elif op == "cutout":
            size_y = round_half_up(self.cutout_ratio * height)
            size_x = round_half_up(self.cutout_ratio * width)
            # Centres as in the reference: the clipped square is equally likely at either border.
            values = {
                "centre_y": integers(0, height - size_y % 2),
                "centre_x": integers(0, width - size_x % 2),
                "size_y": torch.full((batch,), size_y, dtype=torch.long),
                "size_x": torch.full((batch,), size_x, dtype=torch.long),
            }
        elif op == "flip":
            values = {"mask": uniform() < 0.5}
        elif op == "scale":
            low, high = 1.0 / self.scale_ratio, self.scale_ratio
            values = {"sx": low + uniform() * (high - low), "sy": low + uniform() * (high - low)}
        else:  # rotate
            limit = math.radians(self.rotate_degrees)
            values = {"angles": (uniform() * 2.0 - 1.0) * limit}
        return DSAParams(op, values)

    def apply(self, x: torch.Tensor, params: DSAParams) -> torch.Tensor:
        """Apply a recorded draw to ``x``; deterministic, so a replay gives identical images."""
        if params.op == NONE:
            return x
        if params.op not in _APPLY:
            raise ValueError(f"unknown DSA op {params.op!r} in recorded parameters")
        for name, value in params.values.items():
            if value.dim() > 0 and value.shape[0] != x.shape[0]:
                raise ValueError(
                    f"DSA parameter {name!r} was drawn for {value.shape[0]} images, "
                    f"got a batch of {x.shape[0]}"
                )
        values = {name: value.to(x.device) for name, value in params.values.items()}
        return _APPLY[params.op](x, **values)

    def sample_shared(self, height: int, width: int, generator: torch.Generator) -> DSAParams:
        """One transform for any number of images: an op and ONE set of values (batch 1).

        Apply it with :meth:`apply_shared`. This is the Siamese mode of the matching methods
        (DC/DSA, DM, CAFE; docs/methods.md#shared-pieces): the reference draws per-sample
        parameters and copies sample 0's to the whole batch, i.e. one op with one set of values
        for all images.
        """
        return self.sample(1, height, width, generator)

    def apply_shared(self, x: torch.Tensor, params: DSAParams) -> torch.Tensor:
        """Apply a shared (batch-1) draw to every image of ``x``."""
        return self.apply(x, broadcast(params, x.shape[0]))

    def siamese(
        self, batches: Sequence[torch.Tensor], generator: torch.Generator
    ) -> list[torch.Tensor]:
        """Augment every batch (e.g. a class's real and synthetic images) with one shared draw.

        The batches must share (H, W); each may have its own size. One draw per call, so call it
        once per class and step with the run's generator.
        """
        if not self.enabled:
            return list(batches)
        if not batches:
            return []
        height, width = batches[0].shape[-2:]
        if any(tuple(b.shape[-2:]) != (height, width) for b in batches):
            raise ValueError("Siamese augmentation needs batches of one image size")
        params = self.sample_shared(int(height), int(width), generator)
        return [self.apply_shared(b, params) for b in batches]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` (``(B, C, H, W)``) with a fresh draw from ``generator``."""
        if not self.enabled:
            return x
        batch, _, height, width = x.shape
        return self.apply(x, self.sample(batch, height, width, generator))
