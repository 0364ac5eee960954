"""Expert trajectories (``ddpp buffer``): train networks on real data and snapshot every epoch.

A buffer folder holds ``buffer.json`` (the manifest: settings, layout, data description),
``zca.safetensors`` when ZCA is on, and one ``expert_NNNN.safetensors`` per expert, each written
atomically the moment that expert finishes. Expert ``i`` draws all its randomness from streams
derived from ``(seed, "expert", i)``, so rerunning a command resumes with the first missing expert
and gives exactly the files an uninterrupted run would have written.

``parallel=K`` trains K experts at once as one vmapped model (:mod:`batched`), each with its own
streams, so the files equal one-at-a-time training to float tolerance. Under ``torchrun`` the
missing experts are split between the ranks; each rank writes the files of the experts it
trained, and rank 0 alone writes the manifest and the ZCA.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs
import torch

from ddpp_cli import __version__
from ddpp_cli.engine import augment, batched, data, models, store, zca
from ddpp_cli.engine.device import derive_seed, make_generator, resolve_device, seeded
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.faults import StageFailed
from ddpp_cli.engine.functional import ParamLayout, flat_parameters
from ddpp_cli.engine.preprocess import Normalization, PreparedData, prepare
from ddpp_cli.engine.training import accuracy, train_epoch

MANIFEST_NAME = "buffer.json"
MANIFEST_FORMAT = "ddpp.buffer/1"
ZCA_NAME = "zca.safetensors"
_EXPERT_PATTERN = re.compile(r"^expert_(\d{4,})\.safetensors$")

EventCallback = Callable[[object], None]


@dataclass(frozen=True)
class BufferConfig:
    """Everything that determines the expert trajectories (SPEC §5 defaults)."""

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

    def __post_init__(self) -> None:
        data.info(self.dataset)  # unknown dataset -> DdppError
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
        return settings


@dataclass(frozen=True)
class BufferStarted:
    folder: Path
    total: int | None  # None: an import without --experts learns the count at its last file
    existing: int
    train_size: int
    test_size: int
    num_params: int
    preprocessing: str


@dataclass(frozen=True)
class ExpertStarted:
    index: int
    epochs: int


@dataclass(frozen=True)
class EpochFinished:
    index: int
    epoch: int
    epochs: int
    train_loss: float
    test_accuracy: float


@dataclass(frozen=True)
class ExpertRecord:
    """One expert of a buffer: where it is and how well it did after each epoch."""

    index: int
    path: Path
    test_accuracy: list[float]
    seconds: float | None = None
    resumed: bool = False


@dataclass(frozen=True)
class ExpertFinished:
    record: ExpertRecord


@dataclass(frozen=True)
class BufferSummary:
    folder: Path
    manifest: Path
    zca: Path | None
    experts: list[ExpertRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Trajectory:
    """One expert: its parameters at init and after every epoch, ``params[e]`` of shape (P,)."""

    params: torch.Tensor
    metadata: dict[str, Any]

    @property
    def epochs(self) -> int:
        return int(self.params.shape[0]) - 1


def default_buffer_dir(dataset: str, arch: str, use_zca: bool) -> Path:
    """Where buffers live by default: the platformdirs data folder, one sub-folder per setting."""
    name = f"{dataset}-{arch}" + ("-zca" if use_zca else "")
    return platformdirs.user_data_path("ddpp") / "buffers" / name


def expert_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"expert_{index:04d}.safetensors"


def expert_files(folder: Path) -> dict[int, Path]:
    """The expert files present in ``folder``, by index."""
    found = {}
    for path in Path(folder).glob("expert_*.safetensors"):
        match = _EXPERT_PATTERN.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def read_manifest(folder: Path) -> dict[str, Any]:
    """The ``buffer.json`` of ``folder``, checked, or a DdppError saying how to make one."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise DdppError(
            f"{folder} is not a ddpp buffer (no {MANIFEST_NAME}); create one with 'ddpp buffer'."
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DdppError(f"{path} is not readable JSON ({exc}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DdppError(f"{path} is not a {MANIFEST_FORMAT} manifest.")
    return manifest


def load_trajectory(path: Path, layout: ParamLayout | None = None) -> Trajectory:
    """Read one expert file, checking its format and (optionally) its parameter layout."""
    stored = store.read(path, store.TRAJECTORY_FORMAT)
    params = store.require_tensor(stored, "params", ndim=2)
    if layout is not None and params.shape[1] != layout.numel:
        raise DdppError(
            f"{path} holds {params.shape[1]} parameters per snapshot, but the architecture "
            f"needs {layout.numel}; it belongs to another architecture or dataset."
        )
    return Trajectory(params=params, metadata=stored.metadata)


def _check_expert_file(path: Path, epochs: int, numel: int) -> None:
    """Cheap validity check of an existing expert file (header, format and tensor shape)."""
    shape = store.read_shapes(path, store.TRAJECTORY_FORMAT).get("params", ())
    if shape != (epochs + 1, numel):
        raise DdppError(
            f"{path} holds a trajectory of shape {shape}, expected {(epochs + 1, numel)}; "
            "remove it and rerun."
        )


def _data_description(prepared: PreparedData) -> dict[str, Any]:
    return {
        "channels": prepared.channels,
        "image_size": list(prepared.image_size),
        "num_classes": prepared.num_classes,
        "class_names": list(prepared.train.class_names),
        "train_size": len(prepared.train.labels),
        "test_size": len(prepared.test.labels),
    }


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    records = []
    for index, path in expert_files(folder).items():
        metadata = store.read_metadata(path)
        accuracies = metadata.get("test_accuracy") or []
        records.append(
            {
                "index": index,
                "file": path.name,
                "final_test_accuracy": accuracies[-1] if accuracies else None,
            }
        )
    manifest = {**manifest, "experts": records, "ddpp_version": __version__}
    path = Path(folder) / MANIFEST_NAME
    store.atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def _check_folder(folder: Path, config: BufferConfig) -> None:
    manifest_path = folder / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = read_manifest(folder)
        previous = manifest.get("config", {})
        if previous != config.identity():
            raise DdppError(
                f"{folder} holds a buffer made with other settings "
                f"({store.describe_difference(previous, config.identity())}); use another --out "
                "or the same settings."
            )
    elif expert_files(folder):
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
    on_event: EventCallback | None = None,
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
    on_event: EventCallback | None = None,
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
    on_event: EventCallback | None = None,
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
    existing = expert_files(folder)
    for path in existing.values():
        _check_expert_file(path, config.epochs, layout.numel)
    if world.is_main:
        _write_manifest(folder, manifest)
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
        kept = sum(1 for i in expert_files(folder) if i < config.experts)
        text = f"{kept} of {config.experts} experts are finished and kept in {folder}"
        raise StageFailed("buffer", text, folder) from exc
    trained = _gather_records(trained, world, folder, manifest, emit)
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
        config.dataset,
        data_root,
        use_zca=config.zca,
        download=download,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        image_size=config.image_size,
        seed=config.seed,
        whitening=saved_zca,
    )
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
        "format": MANIFEST_FORMAT,
        "dataset": config.dataset,
        "arch": config.arch,
        "config": config.identity(),
        "epochs": config.epochs,
        "layout": layout.to_json(),
        "preprocessing": prepared.preprocessing.describe(ZCA_NAME if config.zca else None),
        "data": _data_description(prepared),
    }


def _resumed_records(
    config: BufferConfig, existing: dict[int, Path], emit: EventCallback
) -> list[ExpertRecord]:
    """The records of the experts already in the folder (each announced as finished)."""
    resumed = []
    for index in range(config.experts):
        if index in existing:
            accuracies = store.read_metadata(existing[index]).get("test_accuracy") or []
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
    on_event: EventCallback | None,
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
            _write_manifest(folder, manifest)
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
        expert_path(folder, index),
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
    emit: EventCallback,
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
        _write_manifest(folder, manifest)
    world.barrier()  # the manifest lists every expert before any rank returns
    return everyone


# ------------------------------------------------------------------------------ MTT import

# Options of ``ddpp buffer`` that set how experts are trained, by their config name: none of
# them can apply to experts MTT already trained.
IMPORT_REFUSED_OPTIONS = {
    "epochs": "--epochs",
    "lr": "--lr",
    "batch_size": "--batch-size",
    "dsa": "--dsa/--no-dsa",
    "train_subset": "--train-subset",
    "test_subset": "--test-subset",
    "parallel": "--parallel",
    "seed": "--seed",
}
# MTT's buffer.py saves to <buffer_path>/<dataset>[_NO_ZCA]/<model>/replay_buffer_<n>.pt, with
# the _NO_ZCA suffix only for CIFAR10/CIFAR100 trained without --zca.
_MTT_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "tiny": "tinyimagenet"}
_MTT_ZCA_SUFFIX_DATASETS = ("cifar10", "cifar100")
_MTT_MODEL_FOLDER = re.compile(r"^(convnet|alexnet|vgg|resnet|lenet|mlp)", re.IGNORECASE)
# MTT's utils.get_dataset normalises CIFAR-100 (without ZCA) with CIFAR-10's mean and std.
_MTT_NORMALIZATION_OF = {"cifar100": "cifar10"}


def check_import_options(given: Mapping[str, object]) -> None:
    """DdppError (one line) for the first option given that cannot apply to ``--import``.

    ``given`` maps config names (``epochs``, ``lr``, ``batch_size``, ``dsa``, ``train_subset``,
    ``test_subset``, ``parallel``, ``seed``, or any other) to the value the user passed; a value of
    None counts as not given. Names outside :data:`IMPORT_REFUSED_OPTIONS` are ignored.
    """
    for name, flag in IMPORT_REFUSED_OPTIONS.items():
        if given.get(name) is not None:
            raise DdppError(
                f"{flag} does not apply to --import: the experts are already trained; drop it."
            )


def mtt_folder_settings(source: Path) -> tuple[str | None, bool | None]:
    """(dataset, ZCA) as MTT's folder naming tells them, None where it does not.

    ``…/CIFAR10/ConvNet`` was trained with ZCA, ``…/CIFAR10_NO_ZCA/ConvNet`` without (likewise
    CIFAR100). Other datasets (``Tiny/ConvNet``) carry no ZCA mark, and a folder not named after
    an MTT model tells nothing.
    """
    source = Path(source).expanduser().resolve()
    if not _MTT_MODEL_FOLDER.match(source.name):
        return None, None
    name = source.parent.name.lower()
    no_zca = name.endswith("_no_zca")
    dataset = _MTT_DATASETS.get(name.removesuffix("_no_zca"))
    if no_zca:
        return dataset, False
    return dataset, (True if dataset in _MTT_ZCA_SUFFIX_DATASETS else None)


def resolve_import_zca(source: Path, dataset: str, use_zca: bool | None) -> bool:
    """Whether the experts in ``source`` saw ZCA: the folder name's answer, else ``use_zca``.

    DdppError when neither tells, when the two disagree, or when the folder is named after
    another dataset than ``dataset``.
    """
    named_dataset, named_zca = mtt_folder_settings(source)
    if named_dataset is not None and named_dataset != dataset:
        raise DdppError(
            f"{source} is where MTT keeps {named_dataset} experts, not {dataset}; pass "
            f"--dataset {named_dataset} or the {dataset} buffer folder."
        )
    if use_zca is None:
        if named_zca is None:
            raise DdppError(
                f"cannot tell from {source} whether its experts were trained with ZCA (MTT names "
                "CIFAR folders <dataset>/ConvNet with ZCA, <dataset>_NO_ZCA/ConvNet without); "
                "pass --zca or --no-zca."
            )
        return named_zca
    if named_zca is not None and use_zca != named_zca:
        raise DdppError(
            f"{source} is named as MTT names experts trained {'with' if named_zca else 'without'}"
            f" ZCA, but {'--zca' if use_zca else '--no-zca'} was given; drop the option."
        )
    return use_zca


def mtt_normalization(dataset: str) -> Normalization:
    """The per-channel mean/std MTT normalised ``dataset`` with when ZCA is off.

    ddpp's table values, except CIFAR-100, which MTT normalised with CIFAR-10's.
    """
    entry = data.info(_MTT_NORMALIZATION_OF.get(data.info(dataset).name, dataset))
    if entry.mean is None or entry.std is None:
        raise DdppError(
            f"MTT has no normalisation for {dataset}; import its experts with --zca or --no-zca "
            "on a dataset MTT supports."
        )
    return Normalization(tuple(entry.mean), tuple(entry.std))


def mtt_files(source: Path) -> list[Path]:
    """MTT's ``replay_buffer_<n>.pt`` files in ``source``, in the order of ``n``."""
    source = Path(source)
    if not source.is_dir():
        raise DdppError(f"{source} is not a folder of MTT replay_buffer_*.pt files.")
    files = sorted(
        source.glob("replay_buffer_*.pt"),
        key=lambda p: (int(re.sub(r"\D", "", p.stem) or 0), p.name),
    )
    if not files:
        raise DdppError(f"{source} holds no replay_buffer_*.pt files.")
    return files


def _load_mtt_file(path: Path) -> list[list[list[torch.Tensor]]]:
    """One MTT ``replay_buffer_*.pt``: experts → epochs → parameter tensors (weights only)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DdppError(
            f"{path} cannot be read as a weights-only MTT buffer ({reason}); only lists of "
            "tensors are accepted, never arbitrary pickles."
        ) from None
    ok = isinstance(content, list) and all(
        isinstance(expert, list)
        and expert
        and all(
            isinstance(epoch, list) and epoch and all(isinstance(t, torch.Tensor) for t in epoch)
            for epoch in expert
        )
        for expert in content
    )
    if not ok or not content:
        raise DdppError(
            f"{path} is not an MTT replay buffer: expected a list of experts, each a list of "
            "epochs, each a list of parameter tensors."
        )
    return content


def _flatten_mtt_epoch(
    tensors: list[torch.Tensor], layout: ParamLayout, where: str
) -> torch.Tensor:
    shapes = [tuple(t.shape) for t in tensors]
    if [math.prod(s) for s in shapes] != [math.prod(s) for s in layout.shapes]:
        raise DdppError(
            f"{where}: parameter shapes {shapes[:4]}… do not match the architecture's "
            f"{list(layout.shapes)[:4]}…; check --dataset and --arch."
        )
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def _imported_so_far(folder: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of an earlier import of the same source and settings into ``folder``.

    None for an empty folder; DdppError for a folder holding anything else.
    """
    if (folder / MANIFEST_NAME).is_file():
        manifest = read_manifest(folder)
        previous = manifest.get("config", {})
        if previous != config:
            raise DdppError(
                f"{folder} holds another buffer ({store.describe_difference(previous, config)}); "
                "import into an empty --out folder or rerun with the same settings."
            )
        return manifest
    if expert_files(folder):
        raise DdppError(f"{folder} holds expert files but no {MANIFEST_NAME}; use an empty --out.")
    return None


def _source_positions(existing: dict[int, Path]) -> dict[str, int]:
    """For each MTT file whose experts are all converted already: how many experts it holds."""
    counts: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    for path in existing.values():
        origin = store.read_metadata(path).get("source") or {}
        name, position, count = origin.get("file"), origin.get("position"), origin.get("of")
        if isinstance(name, str) and isinstance(position, int) and isinstance(count, int):
            counts[name] = count
            seen.setdefault(name, set()).add(position)
    return {name: n for name, n in counts.items() if seen[name] == set(range(n))}


def import_mtt(
    source: Path,
    folder: Path,
    *,
    dataset: str,
    arch: str = "convnet",
    experts: int | None = None,
    use_zca: bool | None = None,
    data_root: Path | None = None,
    download: bool = True,
    image_size: int | None = None,
    device: str = "auto",
    on_event: EventCallback | None = None,
) -> BufferSummary:
    """Convert MTT's ``replay_buffer_*.pt`` files in ``source`` into a ddpp buffer in ``folder``.

    Streams: one file is loaded at a time (``torch.load(weights_only=True)``), and each of its
    experts is written atomically as ``expert_NNNN.safetensors`` the moment it is converted, in
    file order (``experts``: only the first N). Rerunning after a kill continues with the first
    missing expert and gives the files an uninterrupted import writes; files whose experts are
    all converted are not read again. ZCA on/off comes from MTT's folder name when it tells
    (:func:`resolve_import_zca`), else from ``use_zca``. Without ZCA the normalisation MTT used
    (:func:`mtt_normalization`) is recorded in the manifest, for later stages to apply. The
    dataset is loaded to describe the data (and fit the ZCA), since MTT stores neither.
    ``device`` is only validated: the conversion runs on the CPU.
    """
    emit = on_event or (lambda event: None)
    resolve_device(device)
    source, folder = Path(source), Path(folder)
    files = mtt_files(source)
    if experts is not None and experts < 1:
        raise DdppError(f"--experts must be at least 1 (got {experts}).")
    models.check_known(arch)
    target = _import_target(
        source, folder, dataset=data.info(dataset).name, arch=arch, use_zca=use_zca,
        data_root=data_root, download=download, image_size=image_size,
    )  # fmt: skip
    existing = expert_files(folder)
    if target.manifest is not None:
        target.described["epochs"] = int(target.manifest["epochs"])
        for path in existing.values():
            _check_expert_file(path, target.described["epochs"], target.layout.numel)
    complete = _source_positions(existing)
    started = replace(
        target.started,
        total=experts,
        existing=sum(1 for i in existing if experts is None or i < experts),
    )
    records: list[ExpertRecord] = []
    try:
        _import_files(files, target, existing, complete, started, records, experts, emit)
    except DdppError:
        raise
    except Exception as exc:  # a fault mid-import: the converted experts are complete files
        kept = len(expert_files(folder))
        which = "1 converted expert is" if kept == 1 else f"{kept} converted experts are"
        raise StageFailed("buffer", f"{which} kept in {folder}", folder) from exc
    if experts is not None and len(records) < experts:
        raise DdppError(
            f"--experts {experts} asks for more experts than {source} holds ({len(records)}); "
            "the ones found are converted."
        )
    manifest_path = _write_manifest(folder, target.described)
    return BufferSummary(
        folder=folder, manifest=manifest_path, zca=target.zca_path, experts=records
    )


def _import_files(
    files: list[Path],
    target: _ImportTarget,
    existing: dict[int, Path],
    complete: dict[str, int],
    started: BufferStarted,
    records: list[ExpertRecord],
    experts: int | None,
    emit: EventCallback,
) -> None:
    """Convert ``files`` in order into ``records`` (the first ``experts``), skipping the files a
    killed import had finished."""
    for number, path in enumerate(files):
        if experts is not None and len(records) >= experts:
            break
        index = len(records)
        skip = path.name in complete and all(
            index + p in existing for p in range(complete[path.name])
        )
        content = None if skip else _load_mtt_file(path)
        if number == 0:
            emit(started)  # after the first file proved readable
        if content is None:  # converted before a kill: not read again
            count = complete[path.name]
            if experts is not None:
                count = min(count, experts - index)
            for i in range(index, index + count):
                records.append(ExpertRecord(i, existing[i], [], resumed=True))
                emit(ExpertFinished(records[-1]))
            continue
        _convert_file(target, path, content, existing, records, experts, emit)
        del content
        _write_manifest(target.folder, target.described)


@dataclass
class _ImportTarget:
    """What an import writes into its folder: the settings, the manifest so far, the layout."""

    folder: Path
    config: dict[str, Any]
    manifest: dict[str, Any] | None  # of an earlier import into the folder
    described: dict[str, Any]  # the manifest being written ("epochs" once known)
    layout: ParamLayout
    zca_path: Path | None
    started: BufferStarted


def _import_target(
    source: Path, folder: Path, *, dataset: str, arch: str, use_zca: bool | None,
    data_root: Path | None, download: bool, image_size: int | None,
) -> _ImportTarget:  # fmt: skip
    """Resolve ZCA, check the folder (empty or an earlier import of the same source and
    settings), load the data to describe it (and fit or reuse the ZCA), lay out the parameters."""
    use_zca = resolve_import_zca(source, dataset, use_zca)
    config = {
        "imported_from": str(source.expanduser().resolve()),
        "dataset": dataset,
        "arch": arch,
        "zca": use_zca,
        "image_size": image_size,
    }
    folder.mkdir(parents=True, exist_ok=True)
    store.remove_stale_temporaries(folder)
    manifest = _imported_so_far(folder, config)
    zca_path = folder / ZCA_NAME if use_zca else None
    saved_zca = zca.load(zca_path) if zca_path is not None and zca_path.is_file() else None
    prepared = prepare(
        dataset, data_root, use_zca=use_zca, download=download, image_size=image_size,
        whitening=saved_zca, normalization=None if use_zca else mtt_normalization(dataset),
    )  # fmt: skip
    if zca_path is not None and saved_zca is None:
        zca.save(prepared.preprocessing.whitening, zca_path, {"dataset": dataset})
    with seeded(0):
        probe = models.create(arch, prepared.channels, prepared.num_classes, prepared.image_size)
    layout = ParamLayout.of(probe)
    described = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "arch": arch,
        "config": config,
        "layout": layout.to_json(),
        "preprocessing": prepared.preprocessing.describe(ZCA_NAME if use_zca else None),
        "data": _data_description(prepared),
    }
    started = BufferStarted(
        folder=folder, total=None, existing=0, train_size=len(prepared.train.labels),
        test_size=len(prepared.test.labels), num_params=layout.numel,
        preprocessing=prepared.preprocessing.kind,
    )  # fmt: skip
    return _ImportTarget(folder, config, manifest, described, layout, zca_path, started)


def _convert_file(
    target: _ImportTarget, path: Path, content: list, existing: dict[int, Path],
    records: list[ExpertRecord], experts: int | None, emit: EventCallback,
) -> None:  # fmt: skip
    """Convert the experts of one loaded MTT file in order (each written atomically, those
    found in ``existing`` kept), appending to ``records``; each one is dropped once written."""
    described = target.described
    total = len(content)
    for position in range(total):
        if experts is not None and len(records) >= experts:
            break
        index = len(records)
        expert, content[position] = content[position], None  # drop each once converted
        where = f"{path.name} expert {position}"
        epochs = len(expert) - 1
        if "epochs" not in described:
            described["epochs"] = epochs
            _write_manifest(target.folder, described)  # the manifest before any expert file
        if epochs != described["epochs"]:
            raise DdppError(
                f"{where} has {epochs} epochs but the experts before it have "
                f"{described['epochs']}; MTT files of one buffer must agree."
            )
        if index in existing:
            records.append(ExpertRecord(index, existing[index], [], resumed=True))
        else:
            params = torch.stack([_flatten_mtt_epoch(e, target.layout, where) for e in expert])
            del expert
            source = {"file": path.name, "position": position, "of": total}
            written = _write_imported_expert(target, index, params, source)
            del params
            records.append(ExpertRecord(index, written, []))
        emit(ExpertFinished(records[-1]))


def _write_imported_expert(
    target: _ImportTarget, index: int, params: torch.Tensor, source: dict[str, Any]
) -> Path:
    """``expert_NNNN.safetensors`` of an imported expert (no seed or accuracies: MTT kept none)."""
    described = target.described
    return store.write(
        expert_path(target.folder, index),
        {"params": params},
        store.TRAJECTORY_FORMAT,
        {
            "dataset": described["dataset"],
            "arch": described["arch"],
            "expert": index,
            "seed": None,
            "config": target.config,
            "layout": described["layout"],
            "preprocessing": described["preprocessing"],
            "data": described["data"],
            "test_accuracy": [],
            "train_loss": [],
            "source": source,
        },
    )
