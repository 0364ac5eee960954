"""The whole training set as a baseline (``ddpp evaluate --baseline full``, the compare's ``full``
row): its networks trained under the evaluation protocol, their records cached per identity.

The cache lives in ``<data home>/full-data/<dataset>-<arch>-<hash>/``: the hash is over the
identity (:func:`full_identity`: dataset, preprocessing, image size, channels, train subset and
its seed, every :class:`EvalConfig` field but ``runs`` with the lr resolved, test subset), which
``identity.json`` holds in clear. The evaluation records inside are the ordinary ones
(``evaluate.EvalRecords``), so a later call with the same identity trains only the runs missing
there; :func:`full_accuracy` reads them back without data or training (the scores' Acc(full)).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data, layout, store
from ddpp_cli.engine.baselines.config import BaselineConfig
from ddpp_cli.engine.baselines.prepare import _buffer_data, prepare_pool
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import (
    RECORDS_FORMAT,
    EvalConfig,
    EvalResult,
    evaluate_images,
    protocol_record,
    resolve_lr,
    summarize,
    take_test_subset,
)
from ddpp_cli.engine.events import OnEvent

FULL_DIRNAME = "full-data"  # under the data home
IDENTITY_NAME = "identity.json"
FULL_FORMAT = "ddpp.full/1"
SOURCE = "full"  # the result's protocol "source", as a coreset's method


@dataclass(frozen=True)
class FullConfig:
    """The data a whole-set evaluation trains on: ``dataset`` prepared like the baselines' (ZCA
    for CIFAR by default, ``zca=False`` normalises; ``buffer``: as its experts saw the data),
    all of the training split or a stratified ``train_subset`` drawn with ``seed``."""

    dataset: str
    zca: bool | None = None
    train_subset: int | None = None
    image_size: int | None = None
    channels: int | None = None
    seed: int = 0
    buffer: Path | None = None

    def __post_init__(self) -> None:
        data.info(self.dataset)  # unknown dataset -> DdppError
        data.check_channels(self.dataset, self.channels)
        if self.train_subset is not None and self.train_subset < 1:
            raise DdppError(f"--train-subset must be at least 1 (got {self.train_subset}).")


def preprocessing_key(described: dict[str, Any]) -> dict[str, Any]:
    """What of a ``preprocessing`` record (a set's, or :meth:`Preprocessing.describe`) decides
    the transform: ZCA's regularisation, or the normalisation's mean and std (never a file path:
    a freshly fitted ZCA and a buffer's fit of the same data are the same whitening)."""
    if described.get("kind") == "zca":
        return {"kind": "zca", "regularization": described.get("regularization")}
    return {"kind": described.get("kind"), "mean": described.get("mean"),
            "std": described.get("std")}  # fmt: skip


def full_identity(
    dataset: str,
    preprocessing: dict[str, Any],
    evaluation: EvalConfig,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    train_subset: int | None = None,
    data_seed: int = 0,
    test_subset: int | None = None,
) -> dict[str, Any]:
    """The cache key of a whole-set evaluation, JSON-normal: the dataset, the preprocessing
    (:func:`preprocessing_key`), image size, channels, train subset and its seed, the protocol
    (every :class:`EvalConfig` field but ``runs`` and ``labels``, the latter moot for real
    images, which have hard labels only; ``lr`` as trained, 0.01 when not given) and the test
    subset."""
    protocol = asdict(evaluation)
    del protocol["runs"], protocol["labels"]
    protocol["lr"] = resolve_lr(evaluation, None)[0]
    identity = {
        "format": FULL_FORMAT,
        "dataset": data.info(dataset).name,
        "preprocessing": preprocessing_key(preprocessing),
        "image_size": image_size,
        "channels": channels,
        "train_subset": train_subset,
        "data_seed": data_seed,
        "evaluation": protocol,
        "test_subset": test_subset,
    }
    return json.loads(json.dumps(identity))


def cache_folder(identity: dict[str, Any], root: Path | None = None) -> Path:
    """``<root or data home/full-data>/<dataset>-<arch>-<16 hex of the identity's SHA-256>``."""
    text = json.dumps(identity, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    base = Path(root) if root is not None else layout.data_home() / FULL_DIRNAME
    return base / f"{identity['dataset']}-{identity['evaluation']['arch']}-{digest}"


def _recorded_runs(folder: Path, arch: str) -> dict[int, dict[str, Any]]:
    """The finished runs of the records file in ``folder`` holding the most of them (another
    file there: the same identity, data that hashed differently, e.g. a ZCA refitted)."""
    best: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.glob(f"{arch}-*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(content, dict) or content.get("format") != RECORDS_FORMAT:
            continue
        runs = content.get("runs")
        if not isinstance(runs, dict):
            continue
        found = {
            int(run): entry for run, entry in runs.items()
            if run.isdigit() and isinstance(entry, dict)
            and isinstance(entry.get("accuracy"), float)
        }  # fmt: skip
        if len(found) > len(best):
            best = found
    return best


def full_accuracy(
    identity: dict[str, Any], runs: int | None = None, root: Path | None = None
) -> EvalResult | None:
    """The cached whole-set result of ``identity`` (:func:`full_identity`) from its records
    alone, nothing trained: runs 0…``runs``-1 (None: every run recorded from 0 on without a
    gap); None when the cache lacks any of them."""
    folder = cache_folder(identity, root)
    if not (folder / IDENTITY_NAME).is_file():
        return None
    protocol = identity["evaluation"]
    recorded = _recorded_runs(folder, protocol["arch"])
    count = runs
    if count is None:
        count = 0
        while count in recorded:
            count += 1
    if count < 1 or any(run not in recorded for run in range(count)):
        return None
    accuracies = [float(recorded[run]["accuracy"]) for run in range(count)]
    mean, std = summarize(accuracies)
    config = EvalConfig(**protocol, runs=count)
    record = protocol_record(config, protocol["lr"], "default")
    record |= {
        "dataset": identity["dataset"], "source": SOURCE, "train_subset": identity["train_subset"],
        "test_subset": identity["test_subset"], "cache": str(folder),
        "diverged_runs": [run for run in range(count) if recorded[run].get("diverged")],
    }  # fmt: skip
    seconds = sum(float(recorded[run].get("seconds", 0.0)) for run in range(count))
    return EvalResult(
        arch=protocol["arch"], accuracies=accuracies, mean=mean, std=std, seconds=seconds,
        lr=protocol["lr"], protocol=record, reused_runs=list(range(count)),
    )  # fmt: skip


@dataclass(frozen=True)
class FullResult:
    """A whole-set evaluation: its result and the cache folder holding its records."""

    result: EvalResult
    folder: Path
    identity: dict[str, Any]


def evaluate_full(
    config: FullConfig,
    evaluation: EvalConfig,
    *,
    data_root: Path | None = None,
    download: bool = True,
    zca_path: Path | None = None,
    test_subset: int | None = None,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    parallel: int = 1,
    world: World | None = None,
    root: Path | None = None,
) -> FullResult:
    """Train ``evaluation.runs`` fresh networks on the whole (or subset) training split under
    the protocol (minibatches of its batch size, DSA, lr 0.01 unless ``--lr``: the rule of sets
    without a learned lr, × 0.1 at half) and test each once; runs already in the cache of the
    same identity are taken, not trained. ``zca_path``: whiten with this ZCA file (e.g. a
    buffer's) instead of fitting one."""
    info = data.info(config.dataset)
    if zca_path is not None and config.zca is False:
        raise DdppError("--zca-file PATH and --no-zca contradict each other; drop one.")
    normalization, image_size, data_seed = None, config.image_size, config.seed
    channels = config.channels
    if config.buffer is not None:  # validated as any baseline's buffer (random needs no expert)
        as_baseline = BaselineConfig(
            method="random", dataset=config.dataset, ipc=1, zca=config.zca,
            image_size=config.image_size, buffer=config.buffer, channels=config.channels,
        )  # fmt: skip
        seen = _buffer_data(as_baseline, zca_path)
        zca_path, normalization = seen.zca_file, seen.normalization
        image_size, data_seed, channels = seen.image_size, seen.seed, seen.channels
        use_zca = zca_path is not None
    else:
        use_zca = (info.default_zca if config.zca is None else config.zca) or zca_path is not None
    with tempfile.TemporaryDirectory(prefix="ddpp-full-zca-") as scratch:
        zca_out = Path(scratch) / layout.ZCA_NAME  # a fit here is deterministic: not kept
        prepared, described, _ = prepare_pool(
            info.name, use_zca=use_zca, zca_path=zca_path, zca_out=zca_out, data_root=data_root,
            download=download, train_subset=config.train_subset, image_size=image_size,
            seed=data_seed, normalization=normalization, channels=channels,
        )  # fmt: skip
    test = take_test_subset(prepared.test, test_subset, evaluation.seed)
    identity = full_identity(
        info.name, described, evaluation, image_size=image_size, channels=channels,
        train_subset=config.train_subset, data_seed=data_seed, test_subset=test_subset,
    )  # fmt: skip
    folder = cache_folder(identity, root)
    main = world is None or world.is_main
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        store.atomic_write_text(folder / IDENTITY_NAME, json.dumps(identity, indent=2) + "\n")
    train = prepared.train
    result = evaluate_images(
        train.images, train.labels, test.images, test.labels, num_classes=train.num_classes,
        config=evaluation, lr=None, device=device, on_event=on_event, parallel=parallel,
        world=world, records=folder,
    )  # fmt: skip
    protocol = {
        **result.protocol, "dataset": info.name, "source": SOURCE,
        "preprocessing": prepared.preprocessing.kind, "train_subset": config.train_subset,
        "test_subset": test_subset, "cache": str(folder),
    }  # fmt: skip
    return FullResult(replace(result, protocol=protocol), folder, identity)
