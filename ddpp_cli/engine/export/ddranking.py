"""The DD-Ranking export: ``images.pt``, ``labels.pt``, ``lr.pt`` and ``config.json``.

DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking) evaluates a class-major float tensor of images in its own
input space: ``utils/data.py get_dataset`` normalises CIFAR-10 *and* CIFAR-100 with CIFAR-10's
mean/std (TinyImageNet with ImageNet's), or, with ``use_zca``, whitens ``ToTensor()`` images in
[0, 1] with kornia's ``ZCAWhitening(eps=0.1)`` fitted on the whole train split, the maths of
ddpp's :mod:`~ddpp_cli.engine.zca`. Its demos load ``images.pt``, ``labels.pt`` (soft labels,
N × K, for ``LabelRobustScoreSoft``; here the hard labels of a hard-label set, for
``hard_labels=``) and ``lr.pt`` (``syn_lr``), and read a config with ``Config.from_file``, which
takes YAML or JSON; ``config.json`` carries the keys of its demo configs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data, store, zca
from ddpp_cli.engine.distilled import DistilledSet, resolve_preprocessing
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.export.registry import Exported, ExportFormat, ExportRequest
from ddpp_cli.engine.export.spaces import lr_tensor, moved, write_torch
from ddpp_cli.engine.preprocess import Normalization, Preprocessing

IMAGES_NAME = "images.pt"
LABELS_NAME = "labels.pt"
LR_NAME = "lr.pt"
CONFIG_NAME = "config.json"
ZCA_EPSILON = 0.1  # kornia.enhance.ZCAWhitening(eps=0.1), as DD-Ranking's get_dataset fits it

_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# ddpp's dataset → (DD-Ranking's name, the mean/std its get_dataset normalises with).
DDRANKING_DATASETS: dict[str, tuple[str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "cifar10": ("CIFAR10", _CIFAR10),
    "cifar100": ("CIFAR100", _CIFAR10),
    "tinyimagenet": ("TinyImageNet", _IMAGENET),
}
# The DSA parameters of DD-Ranking's configs/Demo_LRS_Hard_Label.yaml.
DSA_PARAMS = {
    "flip": 0.5, "rotate": 15.0, "saturation": 2.0, "brightness": 1.0, "contrast": 0.5,
    "scale": 1.2, "crop": 0.125, "cutout": 0.5,
}  # fmt: skip


def ddranking_dataset(dataset: str) -> tuple[str, Normalization]:
    """DD-Ranking's name for ``dataset`` and its normalisation; DdppError for a dataset it has
    no loader for."""
    if dataset not in DDRANKING_DATASETS:
        known = ", ".join(DDRANKING_DATASETS)
        raise DdppError(
            f"DD-Ranking has no loader for {dataset} (only {known}); export it with --format "
            "mtt, dc or imagefolder."
        )
    name, (mean, std) = DDRANKING_DATASETS[dataset]
    return name, Normalization(mean, std)


def fit_ddranking_zca(dataset: str, data_root: Path | None, download: bool) -> zca.ZCA:
    """DD-Ranking's ZCA for ``dataset``: fitted with ε 0.1 on the whole train split in [0, 1]."""
    split = data.load(dataset, data_root, "train", download=download)
    return zca.fit(split.images, ZCA_EPSILON)


def same_zca(first: zca.ZCA, second: zca.ZCA) -> bool:
    """Whether two ZCA transforms hold equal tensors (the same fit)."""
    return (
        tuple(first.shape) == tuple(second.shape)
        and torch.equal(first.mean, second.mean)
        and torch.equal(first.whiten, second.whiten)
    )


def ddranking_images(
    distilled: DistilledSet, zca_path: Path | None, fit_zca: Callable[[], zca.ZCA]
) -> tuple[torch.Tensor, bool, list[str]]:
    """(images in DD-Ranking's space, its ``use_zca``, notes). A normalised set goes to
    DD-Ranking's mean/std. A ZCA set keeps its tensor where its ZCA is DD-Ranking's fit
    (:func:`is_ddranking_fit`, or equal to ``fit_zca()``), else goes through pixels to
    ``fit_zca()``'s whitening."""
    _, normalization = ddranking_dataset(distilled.dataset)
    if distilled.preprocessing.get("kind") != "zca":
        images = moved(distilled, Preprocessing(normalization=normalization), zca_path)
        notes = [] if images is distilled.images else [
            "images converted to DD-Ranking's mean/std (CIFAR-10's for CIFAR-100), through "
            "pixels."
        ]  # fmt: skip
        return images, False, notes
    own = resolve_preprocessing(distilled, zca_path).whitening
    if is_ddranking_fit(distilled.dataset, own, zca_fitted_on(distilled, zca_path)):
        return distilled.images, True, []
    fitted = fit_zca()
    if same_zca(own, fitted):
        return distilled.images, True, []
    images = moved(distilled, Preprocessing(whitening=fitted), zca_path)
    return images, True, ["images re-whitened with DD-Ranking's ZCA (fitted on the train split)."]


def zca_fitted_on(distilled: DistilledSet, zca_path: Path | None) -> str | None:
    """The dataset the set's ZCA file says it was fitted on (None where it does not say)."""
    path = zca_path or distilled.preprocessing.get("zca_file")
    fitted_on = store.read_metadata(Path(path)).get("dataset") if path else None
    return fitted_on if isinstance(fitted_on, str) else None


def is_ddranking_fit(dataset: str, whitening: zca.ZCA, fitted_on: str | None) -> bool:
    """Whether ``whitening`` is DD-Ranking's ZCA for ``dataset`` by how it was made: ddpp fits
    on the whole train split in [0, 1] (``preprocess.prepare``) with kornia's maths, so a fit on
    this dataset at its own image size with ε 0.1 is DD-Ranking's, to float32 rounding
    (docs/formats.md#exports-ddpp-export-set---format-f---out-dir)."""
    info = data.info(dataset)
    native = (info.channels, *info.image_size) if info.image_size else None
    try:
        same_dataset = fitted_on is not None and data.info(fitted_on).name == info.name
    except DdppError:  # a name ddpp does not know: not this dataset
        same_dataset = False
    return (
        same_dataset
        and tuple(whitening.shape) == native
        and whitening.regularization == ZCA_EPSILON
    )


def class_order(labels: torch.Tensor) -> torch.Tensor | None:
    """The stable order that makes ``labels`` class-major; None where they already are."""
    order = torch.sort(labels.long(), stable=True).indices
    return None if torch.equal(order, torch.arange(len(labels))) else order


def config(distilled: DistilledSet, dataset_name: str, use_zca: bool, ipc: int) -> dict[str, Any]:
    """A config with the keys of DD-Ranking's demo configs (hard or soft labels)."""
    height, width = (int(v) for v in distilled.images.shape[2:])
    model = "ConvNet-4" if max(height, width) > 32 else "ConvNet-3"
    entries: dict[str, Any] = {
        "dataset": dataset_name, "real_data_path": "./dataset/", "ipc": ipc,
        "im_size": [height, width], "model_name": model, "data_aug_func": "dsa",
        "aug_params": dict(DSA_PARAMS), "use_zca": use_zca, "custom_train_trans": None,
        "custom_val_trans": None, "optimizer": "sgd", "lr_scheduler": "step", "step_size": 500,
        "weight_decay": 0.0005, "momentum": 0.9, "num_eval": 5, "num_epochs": 1000,
        "syn_batch_size": 256, "real_batch_size": 256, "default_lr": 0.01, "num_workers": 4,
        "device": "cuda", "dist": False, "eval_full_data": False,
        "random_data_path": "./random_data/", "random_data_format": "tensor",
    }  # fmt: skip
    if distilled.targets is None:
        entries |= {"use_torchvision": False, "save_path": "./results/hard_label_scores.csv"}
        return entries
    if distilled.target_loss == "soft-ce":
        criterion = "sce"
        kwargs: dict[str, Any] = {"temperature": distilled.temperature, "scale_loss": False}
    else:
        criterion, kwargs = "mse_gt", {"mse_weight": 1.0, "ce_weight": 0.0}
    entries |= {
        "soft_label_mode": "S", "soft_label_criterion": criterion, "loss_fn_kwargs": kwargs,
        "stu_use_torchvision": False, "tea_use_torchvision": False,
        "teacher_dir": "./teacher_models", "teacher_model_names": [model],
        "use_aug_for_hard": False, "save_path": "./results/soft_label_scores.csv",
    }  # fmt: skip
    return entries


def write(request: ExportRequest) -> Exported:
    """Write ``request.distilled`` in DD-Ranking's space into ``request.out_dir``."""
    distilled = request.distilled
    dataset_name, _ = ddranking_dataset(distilled.dataset)
    images, use_zca, notes = ddranking_images(
        distilled, request.zca_path,
        lambda: fit_ddranking_zca(distilled.dataset, request.data_root, request.download),
    )  # fmt: skip
    order = class_order(distilled.labels)
    counts = torch.bincount(distilled.labels.long(), minlength=distilled.num_classes).tolist()
    labels = distilled.labels.long() if distilled.targets is None else distilled.targets.float()
    if order is not None:
        images, labels = images[order], labels[order]
    if len(set(counts)) != 1:
        notes.append(
            f"classes hold {min(counts)} to {max(counts)} images: pass labels.pt to DD-Ranking "
            "(its default labels assume equal counts)."
        )
    out = request.out_dir
    files = [
        write_torch(out / IMAGES_NAME, images.detach().float().cpu().contiguous()),
        write_torch(out / LABELS_NAME, labels.detach().cpu().contiguous()),
    ]
    if distilled.lr is None:
        notes.append(
            "the set has no learned lr, so no lr.pt was written (DD-Ranking searches one)."
        )
    else:
        files.append(write_torch(out / LR_NAME, lr_tensor(distilled.lr)))
    settings = config(distilled, dataset_name, use_zca, max(counts))
    store.atomic_write_text(out / CONFIG_NAME, json.dumps(settings, indent=2) + "\n")
    files.append(out / CONFIG_NAME)
    return Exported(tuple(files), tuple(notes))


FORMAT = ExportFormat(
    name="ddranking",
    title="DD-Ranking",
    writes=f"{IMAGES_NAME}, {LABELS_NAME}, {LR_NAME}, {CONFIG_NAME}",
    soft_labels=f"{LABELS_NAME} as the (N, K) soft labels its soft-label evaluation loads",
    writer=write,
)
