"""Loading a split: :func:`load`, the folder it reads from, and the in-process cache."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpp_cli.engine.data.folders import FOLDER_CANDIDATES, find_dataset_dir, load_folder_dataset
from ddpp_cli.engine.data.idx import find_idx_pair
from ddpp_cli.engine.data.registry import (
    REGISTRY,
    SYSTEM_FOLDERS,
    canonical,
    channel_choices,
    default_root,
)
from ddpp_cli.engine.data.splits import ImageSplit
from ddpp_cli.engine.data.torchvision_sets import load_array_dataset
from ddpp_cli.engine.errors import DdppError

SPLITS = ("train", "test")


def load(
    name: str,
    root: Path | None = None,
    split: str = "train",
    *,
    download: bool = True,
    image_size: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> ImageSplit:
    """Load one split of a dataset as an :class:`ImageSplit` (cached in-process).

    ``image_size`` resizes to a square; folder sets without it must have equal-sized images
    (covid19-cxr defaults to 112, tinyimagenet to 64). ``seed`` fixes the stratified 80/20
    train/test split of single-folder datasets. ``channels`` (1 or 3; None: the dataset's, or
    for ``imagefolder`` 1 when every image is gray) decodes image folders in PIL's L or RGB.
    """
    key = canonical(name)
    if split not in SPLITS:
        raise DdppError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}.")
    if image_size is not None and image_size < 1:
        raise DdppError(f"--image-size must be a positive number of pixels, got {image_size}.")
    check_channels(key, channels)
    if channels == REGISTRY[key].channels:
        channels = None  # the dataset's own count: one in-process cache entry
    base = _base_folder(key, root, split)
    return _load_cached(key, base, split, bool(download), image_size, int(seed), channels)


def check_channels(name: str, channels: int | None) -> None:
    """DdppError unless ``channels`` (``--channels``) is None or one ``name`` can load as."""
    choices = channel_choices(name)
    if channels is not None and channels not in choices:
        raise DdppError(
            f"--channels {channels} does not apply to {canonical(name)}: its images have "
            f"{' or '.join(map(str, choices))} channels; drop --channels."
        )


def _base_folder(name: str, root: Path | None, split: str = "train") -> Path:
    """The root a load uses: ``root``, else the data folder, else a system folder holding it."""
    if root is not None:
        return Path(root).expanduser().resolve()
    base = default_root()
    if name in SYSTEM_FOLDERS and find_idx_pair(name, base, split) is None:
        for folder in SYSTEM_FOLDERS[name]:
            if find_idx_pair(name, folder, split) is not None:
                return folder
    return base


def source_folder(name: str, root: Path | None = None, split: str = "train") -> Path:
    """The folder :func:`load` reads ``name`` from (or would download into), without loading.

    For MNIST-style sets this is the folder holding the IDX files when present, so a user can
    see whether the data folder, ``--data-dir`` or a system folder (Debian's) was used.
    """
    key = canonical(name)
    base = _base_folder(key, root, split)
    if key in FOLDER_CANDIDATES:
        with contextlib.suppress(DdppError):
            return find_dataset_dir(key, base)
        return base
    if key in ("mnist", "fashionmnist"):
        found = find_idx_pair(key, base, split)
        if found is not None:
            return found[0].parent
    return base / key


def clear_cache() -> None:
    """Forget the splits cached in-process (the on-disk folder cache is kept)."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(
    name: str,
    root: Path,
    split: str,
    download: bool,
    image_size: int | None,
    seed: int,
    channels: int | None,
) -> ImageSplit:
    if name in FOLDER_CANDIDATES:
        images, labels, classes = load_folder_dataset(name, root, split, image_size, seed, channels)
    else:
        images, labels, classes = load_array_dataset(name, root, split, download)
        if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
            return ImageSplit(_resize(_to_float(images), image_size), labels, classes)
    return ImageSplit(_to_float(images), labels, classes)


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)


def _resize(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear (antialiased) resize of float images to size×size, in chunks."""
    parts = [
        F.interpolate(
            images[i : i + chunk], size=(size, size), mode="bilinear", antialias=True
        ).clamp_(0.0, 1.0)
        for i in range(0, images.shape[0], chunk)
    ]
    return torch.cat(parts)
