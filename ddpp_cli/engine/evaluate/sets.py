"""Evaluating a set file: where a run folder's set is, its dataset's test split transformed
exactly as the set was, and the set evaluated with one architecture or several (crossarch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data, store
from ddpp_cli.engine.device import derive_seed
from ddpp_cli.engine.distilled import DistilledSet, resolve_preprocessing
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate.protocol import EvalConfig, EvalResult
from ddpp_cli.engine.evaluate.records import RUN_SET_NAMES
from ddpp_cli.engine.evaluate.runs import evaluate_images
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.model_selection import label_of_settings
from ddpp_cli.engine.preprocess import Preprocessing
from ddpp_cli.engine.training import LabelVectors


def set_vectors(distilled: DistilledSet) -> LabelVectors | None:
    """The set's label vectors with the loss it was made for (None for a hard-label set)."""
    if distilled.targets is None or distilled.target_loss is None:
        return None
    return LabelVectors(
        distilled.targets.float(), distilled.target_loss, distilled.temperature,
        distilled.label_text,
    )  # fmt: skip


def find_set(path: Path) -> Path:
    """A distilled-set file, or the set in a ``ddpp distill`` run folder (best, else final)."""
    path = Path(path)
    if path.is_dir():
        for name in RUN_SET_NAMES:
            if (path / name).is_file():
                return path / name
        raise DdppError(
            f"{path} holds neither {' nor '.join(RUN_SET_NAMES)}; pass a distilled-set file or "
            "a 'ddpp distill' run folder."
        )
    if not path.is_file():
        raise DdppError(f"{path} does not exist; pass a distilled-set file or a run folder.")
    return path


def _data_options(settings: dict[str, Any]) -> tuple[int | None, int]:
    """(``--image-size``, data seed) recorded in a set's settings, or in its buffer's config.

    The data seed fixes the 80/20 split of single-folder datasets (covid19-cxr, imagefolder).
    """
    nested = settings.get("buffer") if isinstance(settings.get("buffer"), dict) else {}
    size = settings.get("image_size", nested.get("image_size"))
    seed = settings.get("data_seed", nested.get("seed", 0))
    return (int(size) if isinstance(size, int) else None), (
        int(seed) if isinstance(seed, int) else 0
    )


def take_test_subset(test: data.ImageSplit, n: int | None, seed: int) -> data.ImageSplit:
    """The stratified test subset ``--test-subset n`` evaluates on (all of it when None)."""
    if n is None:
        return test
    if n < 1:
        raise DdppError(f"--test-subset must be at least 1 (got {n}).")
    return data.stratified_subset(test, n, derive_seed(seed, "eval", "test"))


def load_test_split(
    distilled: DistilledSet,
    *,
    data_root: Path | None = None,
    download: bool = True,
    zca_path: Path | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, Preprocessing]:
    """The set's dataset's test split, transformed exactly as the set was.

    Refuses (DdppError) a ZCA set whose ZCA is missing, a ``zca_path`` for a normalised set or
    fitted on another dataset or shape, and a set whose dataset, image shape or class count does
    not match the test split.
    """
    info = data.info(distilled.dataset)
    if zca_path is not None and distilled.preprocessing.get("kind") != "zca":
        raise DdppError(
            "this set is normalised, not ZCA-whitened; drop --zca-file (its normalisation is "
            "stored in the set)."
        )
    preprocessing = resolve_preprocessing(distilled, zca_path)
    if preprocessing.whitening is not None:
        zca_file = Path(zca_path or distilled.preprocessing["zca_file"])
        fitted_on = store.read_metadata(zca_file).get("dataset")
        if isinstance(fitted_on, str) and data.info(fitted_on).name != info.name:
            raise DdppError(
                f"the ZCA at {zca_file} was fitted on {fitted_on}, but this set is "
                f"{info.name}; pass the ZCA of the {info.name} buffer the set came from."
            )
    if info.num_classes is not None and info.num_classes != distilled.num_classes:
        raise DdppError(
            f"the set has {distilled.num_classes} classes but {info.name} has "
            f"{info.num_classes}; the set does not belong to this dataset."
        )
    image_size, data_seed = _data_options(distilled.settings)
    channels, height, width = (int(s) for s in distilled.images.shape[1:])
    if image_size is None and info.image_size is None and height == width:
        image_size = height  # image folders have no native size; use the set's
    loads_as_set = channels in data.channel_choices(info.name)  # an image folder: as the set
    test = data.load(
        info.name, data_root, "test", download=download, image_size=image_size, seed=data_seed,
        channels=channels if loads_as_set else None,
    )  # fmt: skip
    if tuple(test.images.shape[1:]) != (channels, height, width):
        raise DdppError(
            f"the set's images are {channels}×{height}×{width} but {info.name} test images are "
            f"{'×'.join(str(s) for s in test.images.shape[1:])}; the set does not belong to "
            "this dataset (or was made at another --image-size than its settings record)."
        )
    if test.num_classes != distilled.num_classes:
        raise DdppError(
            f"the set has {distilled.num_classes} classes but the {info.name} test split has "
            f"{test.num_classes}; the set does not belong to this data."
        )
    test = take_test_subset(test, test_subset, seed)
    return preprocessing.apply(test.images), test.labels, preprocessing


def _describe_set(distilled: DistilledSet, preprocessing: Preprocessing) -> dict[str, Any]:
    return {
        "dataset": distilled.dataset,
        "source": distilled.source,
        "distilled_arch": distilled.arch,
        "ipc": distilled.ipc,
        "set_lr": distilled.lr,
        "preprocessing": preprocessing.kind,
    }


def evaluate_set(
    distilled: DistilledSet,
    config: EvalConfig,
    *,
    data_root: Path | None = None,
    download: bool = True,
    zca_path: Path | None = None,
    test_subset: int | None = None,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    parallel: int = 1,
    world: World | None = None,
    records: Path | None = None,
) -> EvalResult:
    """Evaluate a distilled (or coreset) set on its dataset's test split (see
    :func:`load_test_split` for what is refused); ``parallel``, ``world`` and ``records`` (the
    folder that keeps finished runs, see :func:`default_records_dir`) as in
    :func:`evaluate_per_run`."""
    test_images, test_labels, preprocessing = load_test_split(
        distilled, data_root=data_root, download=download, zca_path=zca_path,
        test_subset=test_subset, seed=config.seed,
    )  # fmt: skip
    result = evaluate_images(
        distilled.images, distilled.labels, test_images, test_labels,
        num_classes=distilled.num_classes, config=config, lr=distilled.lr, device=device,
        on_event=on_event, parallel=parallel, world=world, records=records,
        vectors=set_vectors(distilled),
    )  # fmt: skip
    return replace(
        result,
        protocol={**result.protocol, **_describe_set(distilled, preprocessing)},
        selection=label_of_settings(distilled.settings),  # a test-selected set says so
    )


def crossarch(
    distilled: DistilledSet,
    archs: Sequence[str],
    config: EvalConfig,
    *,
    data_root: Path | None = None,
    download: bool = True,
    zca_path: Path | None = None,
    test_subset: int | None = None,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    parallel: int = 1,
    world: World | None = None,
    records: Path | None = None,
) -> dict[str, EvalResult]:
    """Evaluate one set with every architecture in ``archs`` (like the paper's Table III);
    ``parallel``, ``world`` and ``records`` (one file per architecture in that folder) as in
    :func:`evaluate_per_run`."""
    if not archs:
        raise DdppError("--archs names no architecture; e.g. --archs convnet,alexnet.")
    configs = [replace(config, arch=arch) for arch in archs]  # validates every name first
    test_images, test_labels, preprocessing = load_test_split(
        distilled, data_root=data_root, download=download, zca_path=zca_path,
        test_subset=test_subset, seed=config.seed,
    )  # fmt: skip
    results: dict[str, EvalResult] = {}
    for arch_config in configs:
        result = evaluate_images(
            distilled.images, distilled.labels, test_images, test_labels,
            num_classes=distilled.num_classes, config=arch_config, lr=distilled.lr,
            device=device, on_event=on_event, parallel=parallel, world=world, records=records,
            vectors=set_vectors(distilled),
        )  # fmt: skip
        results[arch_config.arch] = replace(
            result,
            protocol={**result.protocol, **_describe_set(distilled, preprocessing)},
            selection=label_of_settings(distilled.settings),
        )
    return results
