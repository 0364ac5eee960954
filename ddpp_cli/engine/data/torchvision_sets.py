"""Datasets torchvision reads (CIFAR-10/100, MNIST, Fashion-MNIST, SVHN), as whole arrays.

Each split is read from the dataset's ``.data`` array in one go (no per-image transforms),
downloaded when allowed; MNIST-style sets are read from their IDX files first when present.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ddpp_cli.engine.data.idx import idx_folders, idx_names, load_idx
from ddpp_cli.engine.data.registry import (
    REGISTRY,
    SYSTEM_FOLDERS,
    TORCHVISION_CLASSES,
    default_root,
)
from ddpp_cli.engine.errors import DdppError

_EXPECTED_FILES = {
    "cifar10": "cifar-10-python.tar.gz or its extracted folder cifar-10-batches-py/ "
    "(data_batch_1 … data_batch_5, test_batch, batches.meta)",
    "cifar100": "cifar-100-python.tar.gz or its extracted folder cifar-100-python/ "
    "(train, test, meta)",
    "svhn": "train_32x32.mat and test_32x32.mat",
}


def _missing_message(name: str, root: Path, split: str, download: bool, exc: Exception) -> str:
    if name in ("mnist", "fashionmnist"):
        image_base, label_base = idx_names(split)
        files = f"the IDX files {image_base}[.gz] and {label_base}[.gz]"
        where = "one of " + ", ".join(str(f) for f in idx_folders(name, root))
        if root == default_root():
            where += " (or " + ", ".join(str(f) for f in SYSTEM_FOLDERS[name])
            where += ", from Debian's dataset-fashion-mnist)" if name == "fashionmnist" else ")"
    else:
        files = _EXPECTED_FILES[name]
        where = str(root / name)
    if download:
        reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        return (
            f"could not download {name} ({reason}); expected {files} in {where}. Check the "
            "network, or fetch the files yourself and pass --data-dir."
        )
    return (
        f"{name} {split} data not found: expected {files} in {where}. Pass --data-dir pointing "
        "to a folder that has them, or use --download (needs network access)."
    )


def load_array_dataset(
    name: str, root: Path, split: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """uint8 (N, C, H, W) images, int64 labels and class names of a torchvision dataset."""
    table = REGISTRY[name].class_names or ()
    if name in ("mnist", "fashionmnist"):
        found = load_idx(name, root, split)
        if found is not None:
            return found[0], found[1], table
    import torchvision.datasets

    cls = getattr(torchvision.datasets, TORCHVISION_CLASSES[name])
    kwargs = {"split": split} if name == "svhn" else {"train": split == "train"}
    try:
        with (
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            dataset = cls(str(root / name), download=download, **kwargs)
    except ImportError as exc:
        hint = "pip install 'ddpp[svhn]'" if name == "svhn" else "install it"
        raise DdppError(f"reading {name} needs an extra package ({exc}); {hint}.") from None
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise DdppError(_missing_message(name, root, split, download, exc)) from None

    data = dataset.data
    images = data if isinstance(data, torch.Tensor) else torch.from_numpy(data)
    if images.ndim == 3:  # MNIST-style (N, H, W)
        images = images.unsqueeze(1)
    elif name != "svhn":  # CIFAR stores (N, H, W, C); SVHN is already (N, C, H, W)
        images = images.permute(0, 3, 1, 2)
    targets = dataset.labels if name == "svhn" else dataset.targets
    labels = torch.as_tensor(targets, dtype=torch.int64)
    classes = tuple(getattr(dataset, "classes", None) or table)
    return images.contiguous(), labels, classes
