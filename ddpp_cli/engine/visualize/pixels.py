"""A set's images in pixel space: preprocessing undone, clipped view, 8-bit and pillow images.

Every picture shows pixels: a set's normalisation or ZCA whitening is undone first
(:func:`pixel_images`); MTT's clipped view stretches each image's contrast (:func:`clipped_view`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ddpp_cli.engine.distilled import DistilledSet, resolve_preprocessing
from ddpp_cli.engine.errors import DdppError

CLIP_STDS = 2.5


def pixel_images(distilled: DistilledSet, zca_path: Path | None = None) -> torch.Tensor:
    """The set's images back in [0, 1] pixel space (normalisation or ZCA undone, then clamped)."""
    preprocessing = resolve_preprocessing(distilled, zca_path)
    with torch.no_grad():
        pixels = preprocessing.invert(distilled.images.detach().float().cpu())
    return pixels.clamp(0.0, 1.0)


def clipped_view(pixels: torch.Tensor, stds: float = CLIP_STDS) -> torch.Tensor:
    """MTT's clipped view, per image: clamp to mean ± ``stds``·std, then stretch min…max to [0, 1].

    ``pixels`` are (N, C, H, W) pixel-space images before any clamping to [0, 1]; a constant
    image maps to 0 (as ``make_grid(normalize=True)`` does).
    """
    flat = pixels.reshape(pixels.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True) if flat.shape[1] > 1 else torch.zeros_like(mean)
    clipped = torch.maximum(torch.minimum(flat, mean + stds * std), mean - stds * std)
    low = clipped.min(dim=1, keepdim=True).values
    high = clipped.max(dim=1, keepdim=True).values
    return ((clipped - low) / (high - low).clamp_min(1e-5)).reshape(pixels.shape)


def shown_pixels(distilled: DistilledSet, clip: bool, zca_path: Path | None) -> torch.Tensor:
    """The pixels a picture shows: :func:`clipped_view` with ``clip``, else :func:`pixel_images`."""
    if not clip:
        return pixel_images(distilled, zca_path)
    preprocessing = resolve_preprocessing(distilled, zca_path)
    with torch.no_grad():
        return clipped_view(preprocessing.invert(distilled.images.detach().float().cpu()))


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to 8-bit values, rounding to the nearest level (what ToTensor divides back)."""
    return (pixels.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """One (C, H, W) image in [0, 1] as a pillow image: mode L for 1 channel, RGB for 3."""
    array = to_uint8(pixels).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    if array.shape[2] == 3:
        return Image.fromarray(array, mode="RGB")
    raise DdppError(f"cannot draw images with {array.shape[2]} channels (only 1 or 3).")
