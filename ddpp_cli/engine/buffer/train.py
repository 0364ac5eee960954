"""Training a buffer (``ddpp buffer``): the settings, their progress events, and the experts
trained on real data with a snapshot after every epoch.

Expert ``i`` draws all its randomness from streams derived from ``(seed, "expert", i)``, and each
expert file is written atomically the moment that expert finishes, so rerunning a command resumes
with the first missing expert and gives exactly the files an uninterrupted run would have written.

``parallel=K`` trains K experts at once as one vmapped model (:mod:`batched`), each with its own
streams, so the files equal one-at-a-time training to float tolerance. Under ``torchrun`` the
missing experts are split between the ranks; each rank writes the files of the experts it
trained, and rank 0 alone writes the manifest and the ZCA.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import augment, batched, data, models, store, zca
from ddpp_cli.engine.buffer import files
from ddpp_cli.engine.buffer.events import (
    BufferStarted,
    BufferSummary,
    EpochFinished,
    ExpertFinished,
    ExpertRecord,
    ExpertStarted,
)
from ddpp_cli.engine.device import derive_seed, make_generator, seeded
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.faults import StageFailed
from ddpp_cli.engine.functional import ParamLayout, flat_parameters
from ddpp_cli.engine.layout import MANIFEST_NAME, ZCA_NAME
from ddpp_cli.engine.preprocess import PreparedData, prepare
from ddpp_cli.engine.training import accuracy, train_epoch


@dataclass(frozen=True)
class BufferConfig:
    """Everything that determines the expert trajectories (defaults: the paper's buffer)."""

    dataset: str
    arch: str = "convnet"
    experts: int = 100
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa_strategy: str = augment.DEFAULT_STRATEGY
    zca: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    image_size: int | None = None
    seed: int = 0
    channels: int | None = None  # None: the dataset's (an image folder's: from its images)

    def __post_init__(self) -> None:
        data.info(self.dataset)  # unknown dataset -> DdppError
        data.check_channels(self.dataset, self.channels)
        models.check_known(self.arch)
        if self.experts < 1:
            raise DdppError(f"--experts must be at least 1 (got {self.experts}).")
        if self.epochs < 1:
            raise DdppError(f"--epochs must be at least 1 (got {self.epochs}).")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DdppError(f"--lr must be a positive number (got {self.lr}).")
        if self.batch_size < 1:
            raise DdppError(f"--batch-size must be at least 1 (got {self.batch_size}).")
        if self.momentum < 0 or self.weight_decay < 0:
            raise DdppError("momentum and weight decay must be non-negative.")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                flag = "--" + name.replace("_", "-")
                raise DdppError(f"{flag} must be at least 1 (got {value}).")
        augment.DSA(self.dsa_strategy)  # unknown op -> DdppError

    def identity(self) -> dict[str, Any]:
        """The settings two runs must share to write into the same buffer folder."""
        settings = asdict(self)
        del settings["experts"]
        if self.channels is None:
            del settings["channels"]  # as recorded before --channels existed
        return settings


def _check_folder(folder: Path, config: BufferConfig) -> None:
    """DdppError unless ``folder`` is new, empty or a buffer of ``config``'s settings."""
    if (folder / MANIFEST_NAME).is_file():
        previous = files.read_manifest(folder).config
        if previous != config.identity():
            raise DdppError(
                f"{folder} holds a buffer made with other settings "
                f"({store.describe_difference(previous, config.identity())}); use another --out "
                "or the same settings."
            )
    elif files.expert_files(folder):
        raise DdppError(f"{folder} holds expert files but no {MANIFEST_NAME}; use an empty --out.")


def _expert_network(config: BufferConfig, prepared: PreparedData, index: int) -> torch.nn.Module:
    """Expert ``index``'s freshly initialised network: the same draw alone or batched."""
    with seeded(derive_seed(config.seed, "expert", index, "init")):
        return models.create(
            config.arch, prepared.channels, prepared.num_classes, prepared.image_size
        )


def _expert_generator(config: BufferConfig, index: int) -> torch.Generator:
    """Expert ``index``'s stream of batch orders and DSA draws: the same alone or batched."""
    return make_generator(config.seed, "expert", index, "train")


def _expert_optimizer(config: BufferConfig, parameters: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _splits_on(
    prepared: PreparedData,
    device: torch.device,
    train_images: torch.Tensor | None,
    test_images: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train images and labels, test images and labels on ``device`` (images given are kept)."""
    return (
        train_images if train_images is not None else prepared.train.images.to(device),
        prepared.train.labels.to(device),
        test_images if test_images is not None else prepared.test.images.to(device),
        prepared.test.labels.to(device),
    )


def _check_finite(index: int, epoch: int, loss: float) -> None:
    if not math.isfinite(loss):
        raise DdppError(f"expert {index} diverged at epoch {epoch} (loss {loss}); lower --lr.")


def train_expert(
    config: BufferConfig,
    prepared: PreparedData,
    index: int,
    device: torch.device,
    on_event: OnEvent | None = None,
    *,
    train_images: torch.Tensor | None = None,
    test_images: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[float], list[float]]:
    """Train expert ``index``; returns snapshots (E+1, P), test accuracy and loss per epoch."""
    emit = on_event or (lambda event: None)
    train_x, train_y, test_x, test_y = _splits_on(prepared, device, train_images, test_images)
    model = _expert_network(config, prepared, index).to(device)
    generator = _expert_generator(config, index)
    dsa = augment.DSA(config.dsa_strategy)
    optimizer = _expert_optimizer(config, model.parameters())
    snapshots = [flat_parameters(model).cpu()]
    accuracies: list[float] = []
    losses: list[float] = []
    emit(ExpertStarted(index=index, epochs=config.epochs))
    for epoch in range(1, config.epochs + 1):
        loss = train_epoch(
            model,
            train_x,
            train_y,
            optimizer,
            batch_size=config.batch_size,
            dsa=dsa,
            generator=generator,
        )
        _check_finite(index, epoch, loss)
        snapshots.append(flat_parameters(model).cpu())
        accuracies.append(accuracy(model, test_x, test_y))
        losses.append(loss)
        emit(EpochFinished(index, epoch, config.epochs, loss, accuracies[-1]))
    return torch.stack(snapshots), accuracies, losses


def train_experts_batched(
    config: BufferConfig,
    prepared: PreparedData,
    indices: list[int],
    device: torch.device,
    on_event: OnEvent | None = None,
    *,
    train_images: torch.Tensor | None = None,
    test_images: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, list[float], list[float]]]:
    """:func:`train_expert` for every index in ``indices`` at once, as one vmapped model.

    Expert ``i`` uses exactly the initialisation and random streams it gets from
    :func:`train_expert`, so its trajectory equals sequential training to float tolerance.
    """
    emit = on_event or (lambda event: None)
    train_x, train_y, test_x, test_y = _splits_on(prepared, device, train_images, test_images)
    stacked = batched.StackedNetworks(
        [_expert_network(config, prepared, index).to(device) for index in indices]
    )
    generators = [_expert_generator(config, index) for index in indices]
    dsa = augment.DSA(config.dsa_strategy)
    optimizer = _expert_optimizer(config, stacked.parameters())
    snapshots = [stacked.flat().cpu()]
    accuracies: list[list[float]] = []
    losses: list[list[float]] = []
    for index in indices:
        emit(ExpertStarted(index=index, epochs=config.epochs))
    for epoch in range(1, config.epochs + 1):
        epoch_losses = batched.train_epoch(
            stacked, [(train_x, train_y)] * len(indices), optimizer,
            batch_size=config.batch_size, dsa=dsa, generators=generators,
        )  # fmt: skip
        for index, loss in zip(indices, epoch_losses, strict=True):
            _check_finite(index, epoch, loss)
        snapshots.append(stacked.flat().cpu())
        accuracies.append(stacked.accuracy(test_x, test_y))
        losses.append(epoch_losses)
        for k, index in enumerate(indices):
            emit(EpochFinished(index, epoch, config.epochs, epoch_losses[k], accuracies[-1][k]))
    trajectories = torch.stack(snapshots)  # (E+1, K, P)
    return [
        (
            trajectories[:, k].contiguous(),
            [acc[k] for acc in accuracies],
            [loss[k] for loss in losses],
        )
        for k in range(len(indices))
    ]


def train_buffer(
    config: BufferConfig,
    folder: Path,
    *,
    data_root: Path | None = None,
    download: bool = True,
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    parallel: int = 1,
    world: World | None = None,
) -> BufferSummary:
    """Train the experts of ``config`` into ``folder``, resuming with the first missing one.

    ``parallel`` experts are trained at once as one batched model. Under torchrun (``world``)
    each rank trains its share of the missing experts; every rank returns the whole summary.
    An exception while training (out of memory, a full disk, a bug) comes out as
    :class:`~ddpp_cli.engine.faults.StageFailed` from it, saying how many experts are kept.
    """
    emit = on_event or (lambda event: None)
    parallel = batched.check_parallel(parallel)
    world = world or World()
    device = torch.device(device)
    folder = Path(folder)
    prepared, zca_path = _prepare_folder(config, folder, data_root, download, world)
    layout = _expert_layout(config, prepared)
    manifest = _manifest(config, prepared, layout)
    if data.info(config.dataset).num_classes is None:  # a user's folder: which one matters
        manifest["data"]["source"] = str(data.source_folder(config.dataset, data_root).resolve())
    existing = files.expert_files(folder)
    for path in existing.values():
        files.check_expert_file(path, config.epochs, layout.numel)
    if world.is_main:
        files.write_manifest(folder, manifest, planned=config.experts)
    world.barrier()  # no expert file before the manifest (and ZCA) that describe it

    emit(
        BufferStarted(
            folder=folder,
            total=config.experts,
            existing=sum(1 for i in existing if i < config.experts),
            train_size=len(prepared.train.labels),
            test_size=len(prepared.test.labels),
            num_params=layout.numel,
            preprocessing=prepared.preprocessing.kind,
        )
    )
    resumed = _resumed_records(config, existing, emit)
    missing = [i for i in range(config.experts) if i not in existing]
    try:
        trained = _train_missing(
            config, prepared, folder, manifest, world.shard(missing), device=device,
            parallel=parallel, world=world, on_event=on_event,
        )  # fmt: skip
    except DdppError:
        raise
    except Exception as exc:
        kept = sum(1 for i in files.expert_files(folder) if i < config.experts)
        text = f"{kept} of {config.experts} experts are finished and kept in {folder}"
        raise StageFailed("buffer", text, folder) from exc
    trained = _gather_records(trained, world, folder, manifest, emit, config.experts)
    records = sorted(resumed + trained, key=lambda record: record.index)
    return BufferSummary(
        folder=folder, manifest=folder / MANIFEST_NAME, zca=zca_path, experts=records
    )


def _prepare_folder(
    config: BufferConfig, folder: Path, data_root: Path | None, download: bool, world: World
) -> tuple[PreparedData, Path | None]:
    """Make (or check) the buffer folder and load the data, whitened with the folder's ZCA
    (fitted and saved by rank 0 on the first run); returns the data and the ZCA file."""
    folder.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        store.remove_stale_temporaries(folder)
    _check_folder(folder, config)
    zca_path = folder / ZCA_NAME if config.zca else None
    saved_zca = zca.load(zca_path) if zca_path is not None and zca_path.is_file() else None
    world.barrier()  # every rank has looked for a saved ZCA before rank 0 may write one
    prepared = prepare(
        config.dataset, data_root, use_zca=config.zca, download=download,
        train_subset=config.train_subset, test_subset=config.test_subset,
        image_size=config.image_size, seed=config.seed, channels=config.channels,
        whitening=saved_zca,
    )  # fmt: skip
    if zca_path is not None and saved_zca is None and world.is_main:
        zca.save(prepared.preprocessing.whitening, zca_path, {"dataset": config.dataset})
    return prepared, zca_path


def _expert_layout(config: BufferConfig, prepared: PreparedData) -> ParamLayout:
    """The parameter layout of the experts' network."""
    with seeded(0):
        probe = models.create(
            config.arch, prepared.channels, prepared.num_classes, prepared.image_size
        )
    return ParamLayout.of(probe)


def _manifest(config: BufferConfig, prepared: PreparedData, layout: ParamLayout) -> dict[str, Any]:
    """The content of ``buffer.json`` (and of every expert file's metadata)."""
    return {
        "format": files.MANIFEST_FORMAT,
        "dataset": config.dataset,
        "arch": config.arch,
        "config": config.identity(),
        "epochs": config.epochs,
        "layout": layout.to_json(),
        "preprocessing": prepared.preprocessing.describe(ZCA_NAME if config.zca else None),
        "data": files.data_description(prepared),
    }


def _resumed_records(
    config: BufferConfig, existing: dict[int, Path], emit: OnEvent
) -> list[ExpertRecord]:
    """The records of the experts already in the folder (each announced as finished)."""
    resumed = []
    for index in range(config.experts):
        if index in existing:
            accuracies = files.expert_metadata(existing[index]).get("test_accuracy") or []
            resumed.append(ExpertRecord(index, existing[index], list(accuracies), resumed=True))
            emit(ExpertFinished(resumed[-1]))
    return resumed


def _train_missing(
    config: BufferConfig,
    prepared: PreparedData,
    folder: Path,
    manifest: dict[str, Any],
    indices: list[int],
    *,
    device: torch.device,
    parallel: int,
    world: World,
    on_event: OnEvent | None,
) -> list[ExpertRecord]:
    """Train the experts ``indices``, ``parallel`` at a time; each group's files are written
    the moment it finishes (then the manifest, by rank 0)."""
    emit = on_event or (lambda event: None)
    train_images = prepared.train.images.to(device)
    test_images = prepared.test.images.to(device)
    trained: list[ExpertRecord] = []
    for group in batched.groups(indices, parallel):
        started = time.perf_counter()
        if len(group) == 1:
            results = [
                train_expert(
                    config, prepared, group[0], device, on_event,
                    train_images=train_images, test_images=test_images,
                )
            ]  # fmt: skip
        else:
            results = train_experts_batched(
                config, prepared, group, device, on_event,
                train_images=train_images, test_images=test_images,
            )  # fmt: skip
        seconds = (time.perf_counter() - started) / len(group)
        records = [
            _write_expert(config, folder, manifest, index, *result, seconds=seconds)
            for index, result in zip(group, results, strict=True)
        ]
        if world.is_main:
            files.write_manifest(folder, manifest, planned=config.experts)
        for record in records:
            emit(ExpertFinished(record))
        trained += records
    return trained


def _write_expert(
    config: BufferConfig,
    folder: Path,
    manifest: dict[str, Any],
    index: int,
    snapshots: torch.Tensor,
    accuracies: list[float],
    losses: list[float],
    *,
    seconds: float,
) -> ExpertRecord:
    """Write expert ``index``'s file (atomically) and return its record."""
    path = store.write(
        files.expert_path(folder, index),
        {"params": snapshots},
        store.TRAJECTORY_FORMAT,
        {
            "dataset": config.dataset,
            "arch": config.arch,
            "expert": index,
            "seed": config.seed,
            "config": config.identity(),
            "layout": manifest["layout"],
            "preprocessing": manifest["preprocessing"],
            "data": manifest["data"],
            "test_accuracy": accuracies,
            "train_loss": losses,
        },
    )
    return ExpertRecord(index, path, accuracies, seconds=seconds)


def _gather_records(
    trained: list[ExpertRecord],
    world: World,
    folder: Path,
    manifest: dict[str, Any],
    emit: OnEvent,
    planned: int,
) -> list[ExpertRecord]:
    """Under torchrun, every rank's records (announcing the other ranks' experts); the
    manifest is rewritten once all are in. Alone, ``trained`` as it is."""
    if not world.distributed:
        return trained
    mine = {record.index for record in trained}
    everyone = [record for part in world.gather(trained) for record in part]
    for record in everyone:
        if record.index not in mine:
            emit(ExpertFinished(record))  # trained by another rank
    if world.is_main:
        files.write_manifest(folder, manifest, planned=planned)
    world.barrier()  # the manifest lists every expert before any rank returns
    return everyone
