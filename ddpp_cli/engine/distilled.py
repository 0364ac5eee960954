"""Distilled sets (``ddpp.distilled/1``, and ``/2`` with label vectors): synthetic images,
labels, learned lr and how to view them.

Images are stored in model-input space (normalised or ZCA-whitened, as the experts saw the data),
exactly what a network is trained on. ``preprocessing`` says how to get back to pixels: a
normalisation's mean/std, or a reference to the buffer's ZCA file (path and SHA-256; the matrices
are too large to copy into every set). Baseline coresets (random, herding) use the same format.

A set may carry label vectors (``targets``, N × K): soft labels given as logits and trained with
soft cross-entropy at ``temperature`` (DATM's), or regression targets trained with the squared
error (KIP's learned labels). Such a set is written as ``ddpp.distilled/2`` with its
``label_mode`` (``teacher``: an expert's logits; ``learned``: optimised with the images) and
``target_loss``; a set of hard labels is written as version 1, unchanged, and both load.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import store, zca
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.preprocess import Normalization, Preprocessing

LABEL_MODES = ("hard", "teacher", "learned")
# How a set's label vectors train a network: soft cross-entropy on logits at the set's
# temperature (DATM), or the mean squared error to the vectors (KIP).
TARGET_LOSSES = ("soft-ce", "mse")
_LABEL_WORDS = {"teacher": "teacher soft labels", "learned": "learned labels"}
HARD_LABELS_TEXT = "hard labels"  # how every output names class-index labels


def label_vectors_text(mode: str, loss: str | None, temperature: float | None) -> str:
    """How tables name label vectors of ``mode`` trained with ``loss``: "learned labels (MSE)",
    "teacher soft labels (soft CE, T 1)"."""
    how = "MSE" if loss == "mse" else f"soft CE, T {temperature:g}"
    return f"{_LABEL_WORDS[mode]} ({how})"


@dataclass(frozen=True)
class DistilledSet:
    """A distilled (or coreset) image set ready for training.

    ``labels`` are the images' hard classes (for a set with label vectors: the class each image
    was made for, or the vectors' argmax for an import). ``targets`` (N × K float32, None for a
    hard-label set) are the label vectors, with ``label_mode`` ("teacher" or "learned"),
    ``target_loss`` (:data:`TARGET_LOSSES`) and, for soft cross-entropy, ``temperature``.
    """

    images: torch.Tensor  # (N, C, H, W) float32, model-input space
    labels: torch.Tensor  # (N,) int64, class-major
    lr: float | None  # learned step size α (None: use the evaluation default)
    dataset: str
    class_names: tuple[str, ...]
    preprocessing: dict[str, Any]  # Preprocessing.describe(): normalize mean/std or zca reference
    source: str = "distill"  # "distill", "random", "herding", …
    arch: str | None = None  # architecture it was distilled with
    settings: dict[str, Any] = field(default_factory=dict)  # every setting used to make it
    seed: int | None = None
    targets: torch.Tensor | None = None  # (N, K) label vectors; None: hard labels only
    label_mode: str = "hard"  # LABEL_MODES
    target_loss: str | None = None  # TARGET_LOSSES; None without targets
    temperature: float | None = None  # soft-ce's temperature; None otherwise

    def __post_init__(self) -> None:
        check_labels(
            self.targets, self.label_mode, self.target_loss, self.temperature,
            int(self.images.shape[0]), len(self.class_names),
        )  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_text(self) -> str:
        """How tables name the set's labels: "hard labels", "learned labels (MSE)", "teacher
        soft labels (soft CE, T 1)"."""
        if self.targets is None:
            return HARD_LABELS_TEXT
        return label_vectors_text(self.label_mode, self.target_loss, self.temperature)

    @property
    def ipc(self) -> int:
        """Images per class (the largest class count)."""
        return int(torch.bincount(self.labels, minlength=self.num_classes).max())


def check_labels(
    targets: torch.Tensor | None, label_mode: str, target_loss: str | None,
    temperature: float | None, count: int, num_classes: int,
) -> None:  # fmt: skip
    """ValueError when a set's label fields disagree: targets (count × classes) exactly when the
    mode is not "hard", a known loss with them, a positive temperature for soft-ce only."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES} (got {label_mode!r})")
    if targets is None:
        if label_mode != "hard" or target_loss is not None or temperature is not None:
            raise ValueError("a set without label vectors has hard labels only")
        return
    if label_mode == "hard":
        raise ValueError("a set with label vectors needs label_mode teacher or learned")
    if tuple(targets.shape) != (count, num_classes):
        raise ValueError(f"targets must be ({count}, {num_classes}), got {tuple(targets.shape)}")
    if target_loss not in TARGET_LOSSES:
        raise ValueError(f"target_loss must be one of {TARGET_LOSSES} (got {target_loss!r})")
    if target_loss == "soft-ce":
        if temperature is None or not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError("soft-ce needs a positive temperature")
    elif temperature is not None:
        raise ValueError("only soft-ce takes a temperature")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def zca_reference(path: Path) -> dict[str, Any]:
    """The ``preprocessing`` entry of a set whose images are whitened with the ZCA at ``path``."""
    whitening = zca.load(path)
    return {
        "kind": "zca",
        "zca_file": str(Path(path).resolve()),
        "zca_sha256": file_sha256(path),
        "regularization": whitening.regularization,
    }


def save(path: Path, distilled: DistilledSet, extra: dict[str, Any] | None = None) -> Path:
    """Write ``distilled`` atomically: ``ddpp.distilled/1`` for hard labels, ``/2`` (with its
    ``targets`` tensor and label metadata) for a set with label vectors."""
    if distilled.images.ndim != 4 or distilled.labels.shape != (distilled.images.shape[0],):
        raise ValueError("images must be (N, C, H, W) and labels (N,)")
    tensors = {
        "images": distilled.images.detach().float(),
        "labels": distilled.labels.long(),
        "lr": torch.tensor([float("nan") if distilled.lr is None else distilled.lr]),
    }
    metadata = {
        "dataset": distilled.dataset,
        "class_names": list(distilled.class_names),
        "preprocessing": distilled.preprocessing,
        "source": distilled.source,
        "arch": distilled.arch,
        "settings": distilled.settings,
        "seed": distilled.seed,
        "ipc": distilled.ipc,
        **(extra or {}),
    }
    if distilled.targets is None:
        return store.write(path, tensors, store.DISTILLED_FORMAT, metadata)
    tensors["targets"] = distilled.targets.detach().float()
    metadata |= {
        "label_mode": distilled.label_mode,
        "target_loss": distilled.target_loss,
        "temperature": distilled.temperature,
    }
    return store.write(path, tensors, store.DISTILLED_FORMAT_V2, metadata)


_REMEDY = "remake it, or pass another set"
_SET_KEYS: dict[str, store.Check] = {
    "dataset": store.TEXT,
    "class_names": (lambda v: store.is_name_list(v) and bool(v), "must be a list of names"),
    "preprocessing": store.OBJECT,
    "source": store.TEXT,
    "arch": store.optional(store.TEXT),
    "settings": store.optional(store.OBJECT),
    "seed": store.optional(store.INT),
    "ipc": store.optional(store.INT),
    # what a run folder's sets add (RunFolder.save_set): their iteration and validation
    "iteration": store.optional(store.COUNT),
    "val_accuracy": store.optional(store.NUMBER),
    "val_std": store.optional(store.NUMBER),
    "test_accuracy": store.optional(store.NUMBER),  # --selection best-test (and its label)
    "test_std": store.optional(store.NUMBER),
    "selection": store.optional(store.TEXT),
    "diverged_at": store.optional(store.COUNT),
    # version 2: the label vectors' mode, loss and temperature
    "label_mode": (lambda v: v in LABEL_MODES, f"must be one of {', '.join(LABEL_MODES)}"),
    "target_loss": store.optional(
        (lambda v: v in TARGET_LOSSES, f"must be one of {', '.join(TARGET_LOSSES)}")
    ),
    "temperature": store.optional(store.NUMBER),
}
# What ``preprocessing`` holds for each kind (as :meth:`Preprocessing.describe` writes it).
_PREPROCESSING_KEYS: dict[str, dict[str, store.Check]] = {
    "normalize": {"mean": store.NUMBERS, "std": store.NUMBERS},
    "zca": {
        "zca_file": store.optional(store.TEXT),
        "zca_sha256": store.optional(store.TEXT),
        "regularization": store.optional(store.NUMBER),
    },
}


def _unusable(path: Path, key: str, problem: str) -> DdppError:
    return store.unusable(path, "distilled set", key, problem, _REMEDY)


def check_metadata(path: Path, meta: dict[str, Any], channels: int) -> None:
    """DdppError naming ``path`` and the first key of a set's metadata that is missing or
    wrongly typed (``preprocessing`` checked for its kind, a normalisation per channel)."""
    store.check_keys(
        path, meta, _SET_KEYS, what="distilled set", remedy=_REMEDY,
        required=("dataset", "class_names", "preprocessing"),
    )  # fmt: skip
    info = meta["preprocessing"]
    kind = info.get("kind")
    if kind not in _PREPROCESSING_KEYS:
        raise _unusable(
            path, "preprocessing.kind", f"must be zca or normalize (got {store.shown(kind)})"
        )
    table = _PREPROCESSING_KEYS[kind]
    store.check_keys(
        path, info, table, what="distilled set", remedy=_REMEDY,
        required=("mean", "std") if kind == "normalize" else (), prefix="preprocessing.",
    )  # fmt: skip
    for key in ("mean", "std") if kind == "normalize" else ():
        if len(info[key]) != channels:
            raise _unusable(
                path, f"preprocessing.{key}", f"must have one value per channel ({channels})"
            )


def load(path: Path) -> DistilledSet:
    """Read a ``ddpp.distilled/1`` or ``/2`` file, checking shapes and metadata; DdppError (one
    line naming the file and the key) on anything inconsistent."""
    stored = store.read(path, (store.DISTILLED_FORMAT, store.DISTILLED_FORMAT_V2))
    images = store.require_tensor(stored, "images", ndim=4)
    labels = store.require_tensor(stored, "labels", ndim=1)
    lr_tensor = store.require_tensor(stored, "lr", ndim=1)
    meta = stored.metadata
    if labels.shape[0] != images.shape[0]:
        raise DdppError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels.")
    check_metadata(Path(path), meta, int(images.shape[1]))
    class_names = meta["class_names"]
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DdppError(f"{path}: labels outside 0…{len(class_names) - 1}.")
    lr = float(lr_tensor[0]) if lr_tensor.numel() else float("nan")
    labelling = _read_labels(Path(path), stored, int(images.shape[0]), len(class_names))
    return DistilledSet(
        images=images.float(),
        labels=labels.long(),
        lr=None if lr != lr else lr,
        dataset=meta["dataset"],
        class_names=tuple(class_names),
        preprocessing=meta["preprocessing"],
        source=meta.get("source", "distill"),
        arch=meta.get("arch"),
        settings=meta.get("settings") or {},
        seed=meta.get("seed"),
        **labelling,
    )


def _read_labels(path: Path, stored: store.Stored, count: int, classes: int) -> dict[str, Any]:
    """The label-vector fields of a version-2 set (none for version 1); DdppError naming the
    file when they disagree."""
    if stored.format == store.DISTILLED_FORMAT:
        return {}
    meta = stored.metadata
    for key in ("label_mode", "target_loss"):
        if meta.get(key) is None:
            raise _unusable(path, key, "is missing")
    fields = {
        "targets": store.require_tensor(stored, "targets", ndim=2).float(),
        "label_mode": meta["label_mode"],
        "target_loss": meta["target_loss"],
        "temperature": meta.get("temperature"),
    }
    try:
        check_labels(**fields, count=count, num_classes=classes)
    except ValueError as exc:
        raise DdppError(f"{path}: {exc}; remake it, or pass another set.") from None
    return fields


def resolve_preprocessing(distilled: DistilledSet, zca_path: Path | None = None) -> Preprocessing:
    """The transform the set's images were made with (loading its ZCA, or ``zca_path``)."""
    info = distilled.preprocessing
    if info["kind"] == "normalize":
        return Preprocessing(normalization=Normalization(tuple(info["mean"]), tuple(info["std"])))
    path = Path(zca_path or info.get("zca_file") or "")
    if not path.is_file():
        raise DdppError(
            f"this set is ZCA-whitened and needs its ZCA file ({info.get('zca_file')}), which is "
            "missing; pass --zca-file PATH to the buffer's zca.safetensors."
        )
    expected = info.get("zca_sha256")
    if zca_path is None and expected and file_sha256(path) != expected:
        raise DdppError(
            f"{path} is not the ZCA this set was made with (checksum differs); pass "
            "--zca-file PATH."
        )
    whitening = zca.load(path)
    if tuple(whitening.shape) != tuple(distilled.images.shape[1:]):
        raise DdppError(
            f"the ZCA at {path} is for images {whitening.shape}, but the set's images are "
            f"{tuple(distilled.images.shape[1:])}."
        )
    return Preprocessing(whitening=whitening)
