"""From a dataset name to model-ready tensors: subset, then normalisation or ZCA whitening.

The same :class:`Preprocessing` is saved with every buffer and distilled set, so that each later
stage (distillation, evaluation, pictures) transforms data exactly as the experts saw it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data, zca
from ddpp_cli.engine.errors import DdppError


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x − mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] != len(self.mean):
            raise DdppError(
                f"images have {x.shape[1]} channels but the normalisation has {len(self.mean)}."
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return x * std + mean


@dataclass(frozen=True)
class Preprocessing:
    """What turns [0, 1] images into model inputs: a normalisation or a ZCA whitening."""

    normalization: Normalization | None = None
    whitening: zca.ZCA | None = None

    def __post_init__(self) -> None:
        if (self.normalization is None) == (self.whitening is None):
            raise ValueError("exactly one of normalization and whitening must be given")

    @property
    def kind(self) -> str:
        return "zca" if self.whitening is not None else "normalize"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.whitening is not None:
            return self.whitening.apply(x)
        return self.normalization.apply(x)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel space (up to what the model made of the images)."""
        if self.whitening is not None:
            return self.whitening.invert(x)
        return self.normalization.invert(x)

    def describe(self, zca_file: str | None = None) -> dict[str, Any]:
        """Metadata recorded in every file made from data preprocessed this way."""
        if self.whitening is not None:
            return {
                "kind": "zca",
                "zca_file": zca_file,
                "regularization": self.whitening.regularization,
            }
        return {
            "kind": "normalize",
            "mean": list(self.normalization.mean),
            "std": list(self.normalization.std),
        }


def recorded_normalization(described: Mapping[str, Any] | None) -> Normalization | None:
    """The normalisation recorded by :meth:`Preprocessing.describe` (None for ZCA or nothing).

    Pass it to :func:`prepare` so that data is transformed exactly as recorded in a buffer's
    manifest, e.g. CIFAR-10's mean/std for an MTT CIFAR-100 buffer trained without ZCA.
    """
    if not described or described.get("kind") != "normalize":
        return None
    try:
        mean = tuple(float(v) for v in described["mean"])
        std = tuple(float(v) for v in described["std"])
    except (KeyError, TypeError, ValueError):
        raise DdppError(
            f"the recorded normalisation {dict(described)} has no usable mean and std."
        ) from None
    if len(mean) != len(std) or not mean:
        raise DdppError(f"the recorded normalisation {dict(described)} is malformed.")
    return Normalization(mean, std)


@dataclass(frozen=True)
class PreparedData:
    """Model-ready train and test splits of one dataset, plus how they were made."""

    info: data.DatasetInfo
    train: data.ImageSplit
    test: data.ImageSplit
    preprocessing: Preprocessing

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.train.images.shape[2]), int(self.train.images.shape[3]))

    @property
    def num_classes(self) -> int:
        return len(self.train.class_names)


def _transformed(split: data.ImageSplit, preprocessing: Preprocessing) -> data.ImageSplit:
    return data.ImageSplit(
        images=preprocessing.apply(split.images),
        labels=split.labels,
        class_names=split.class_names,
    )


def prepare(
    dataset: str,
    root: Path | None = None,
    *,
    use_zca: bool,
    download: bool = True,
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    channels: int | None = None,
    whitening: zca.ZCA | None = None,
    normalization: Normalization | None = None,
) -> PreparedData:
    """Load ``dataset``, take seeded stratified subsets, and normalise or ZCA-whiten both splits.

    ZCA is fitted on the whole train split (the subset is a compute budget, not a different
    distribution) unless an existing ``whitening`` is given, e.g. the one saved with a buffer.
    Without ZCA, ``normalization`` (e.g. :func:`recorded_normalization` of a buffer's manifest)
    wins over the dataset's table values or the statistics computed from its train split.
    """
    info = data.info(dataset)
    train, test = (
        data.load(
            dataset, root, split, download=download, image_size=image_size, seed=seed,
            channels=channels,
        )
        for split in ("train", "test")
    )  # fmt: skip
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DdppError(
            f"train images are {tuple(train.images.shape[1:])} but test images are "
            f"{tuple(test.images.shape[1:])}; pass --image-size to resize both."
        )
    if use_zca:
        if whitening is None:
            whitening = zca.fit(train.images)
        elif tuple(whitening.shape) != tuple(train.images.shape[1:]):
            raise DdppError(
                f"the saved ZCA is for images {tuple(whitening.shape)}, but this data is "
                f"{tuple(train.images.shape[1:])}."
            )
        preprocessing = Preprocessing(whitening=whitening)
    elif normalization is not None:
        if len(normalization.mean) != train.images.shape[1]:
            raise DdppError(
                f"the recorded normalisation has {len(normalization.mean)} channels but the "
                f"{dataset} images have {train.images.shape[1]}; pass the data the buffer was "
                "made from."
            )
        preprocessing = Preprocessing(normalization=normalization)
    else:
        mean, std = data.normalization(dataset, train)
        preprocessing = Preprocessing(normalization=Normalization(tuple(mean), tuple(std)))
    if train_subset is not None:
        train = data.stratified_subset(train, train_subset, seed)
    if test_subset is not None:
        test = data.stratified_subset(test, test_subset, seed + 1)
    return PreparedData(
        info=info,
        train=_transformed(train, preprocessing),
        test=_transformed(test, preprocessing),
        preprocessing=preprocessing,
    )


def save_fitted_zca(
    fit: Callable[[torch.Tensor], zca.ZCA],
    dataset: str,
    path: Path,
    *,
    root: Path | None = None,
    download: bool = True,
    image_size: int | None = None,
    seed: int = 0,
    channels: int | None = None,
) -> Path:
    """A ZCA variant (``fit``, e.g. :func:`zca.fit_kip`) fitted on ``dataset``'s whole train
    split in [0, 1] and saved to ``path``, for data whitened other than by :func:`prepare`'s
    own fit (KIP's sets and ``--method kip``)."""
    train = data.load(
        dataset, root, "train", download=download, image_size=image_size, seed=seed,
        channels=channels,
    )  # fmt: skip
    return zca.save(fit(train.images), path, {"dataset": dataset})
