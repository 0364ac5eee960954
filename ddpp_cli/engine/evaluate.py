"""Evaluation protocol (SPEC §7): train fresh networks on a set of images, test once, N runs.

Each run trains a freshly initialised network of any registered architecture on the set (hard
labels, cross-entropy, SGD momentum 0.9, weight decay 5e-4, batch 256, DSA on), for ``epochs``
epochs with the learning rate multiplied by 0.1 after epoch ``epochs // 2``, then makes one pass
over the test split, which must be transformed exactly as the set was (same normalisation, or the
same ZCA). Run ``r`` of architecture ``a`` draws its initialisation from
``derive_seed(seed, "eval", a, r)`` and its batches and augmentations from
``make_generator(seed, "eval", a, r, "train")``, so every run is reproducible on its own.

Accuracies are fractions in [0, 1]; ``std`` is the population standard deviation (``np.std``,
ddof 0), as in the papers' tables. The engine never prints: progress goes to ``on_event`` as
:class:`RunStarted`, :class:`EpochFinished` and :class:`RunFinished` (and :class:`Notice`).

``parallel=K`` trains K runs of one architecture at once as one vmapped model (:mod:`batched`);
every run keeps its own streams, so the accuracies equal one-at-a-time training up to float
rounding. Under ``torchrun`` (``world``) the runs are split between the ranks and gathered.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs
import torch

from ddpp_cli import __version__
from ddpp_cli.engine import augment, batched, data, models, store
from ddpp_cli.engine.device import derive_seed, make_generator, seeded
from ddpp_cli.engine.distilled import DistilledSet, resolve_preprocessing
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice
from ddpp_cli.engine.preprocess import Preprocessing
from ddpp_cli.engine.training import predict, train_epoch

DEFAULT_LR = 0.01
LR_DECAY = 0.1
STD_KIND = "population (np.std, ddof=0)"
# How ddpp reports a set's accuracy: the set is chosen on a validation split held out from the
# training data, and each run's network is tested once, after its last epoch. MTT reported the
# best test accuracy over all its evaluation points instead (docs/reproduce.md).
SELECTION_RULE = "validation split, tested once"

EventCallback = Callable[[object], None]
SetForRun = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol (SPEC §7 defaults); ``lr=None`` uses the set's learned lr."""

    arch: str = "convnet"
    runs: int = 5
    epochs: int = 1000
    lr: float | None = None  # None: the set's learned lr, or 0.01 when it has none
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa_strategy: str = augment.DEFAULT_STRATEGY  # "none" = --no-dsa
    seed: int = 0

    def __post_init__(self) -> None:
        models.check_known(self.arch)
        if self.runs < 1:
            raise DdppError(f"--runs must be at least 1 (got {self.runs}).")
        if self.epochs < 1:
            raise DdppError(f"--epochs must be at least 1 (got {self.epochs}).")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise DdppError(f"--lr must be a positive number (got {self.lr}).")
        if not (self.momentum >= 0 and self.weight_decay >= 0):
            raise DdppError("momentum and weight decay must be non-negative.")
        if self.batch_size < 1:
            raise DdppError(f"--batch-size must be at least 1 (got {self.batch_size}).")
        augment.DSA(self.dsa_strategy)  # unknown op -> DdppError


@dataclass(frozen=True)
class RunStarted:
    arch: str
    run: int  # 0-based
    runs: int
    epochs: int


@dataclass(frozen=True)
class EpochFinished:
    arch: str
    run: int
    epoch: int  # 1-based
    epochs: int


@dataclass(frozen=True)
class RunFinished:
    arch: str
    run: int
    runs: int
    accuracy: float
    seconds: float
    diverged: bool = False
    resumed: bool = False  # read from the evaluation records, not trained now


@dataclass(frozen=True)
class EvalResult:
    """Test accuracy (fractions) of every run, their mean and population std, and the protocol."""

    arch: str
    accuracies: list[float]
    mean: float
    std: float
    seconds: float
    lr: float
    protocol: dict[str, Any] = field(default_factory=dict)
    selection: str = SELECTION_RULE

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: arch, accuracies, mean, std, seconds, lr, protocol and selection."""
        return {
            "arch": self.arch,
            "accuracies": list(self.accuracies),
            "mean": self.mean,
            "std": self.std,
            "seconds": self.seconds,
            "lr": self.lr,
            "protocol": dict(self.protocol),
            "selection": self.selection,
        }

    def mean_std_text(self) -> str:
        """``"72.93 ± 0.95"``: mean ± std in percent, two decimals (add the unit yourself)."""
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"


def summarize(accuracies: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of the run accuracies."""
    values = [float(a) for a in accuracies]
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def resolve_lr(config: EvalConfig, set_lr: float | None) -> tuple[float, str]:
    """The learning rate to train with and where it came from (``--lr``, the set, or default)."""
    if config.lr is not None:
        return float(config.lr), "--lr"
    if set_lr is None:
        return DEFAULT_LR, "default"
    if not (math.isfinite(set_lr) and set_lr > 0):
        raise DdppError(f"the set's learned lr is {set_lr}, which cannot train; pass --lr.")
    return float(set_lr), "set"


def _check_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
) -> None:
    if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DdppError(
            f"a training set needs (N, C, H, W) images and (N,) labels, got "
            f"{tuple(images.shape)} and {tuple(labels.shape)}."
        )
    if images.shape[0] == 0:
        raise DdppError("the set holds no images.")
    if test_images.ndim != 4 or tuple(test_images.shape[1:]) != tuple(images.shape[1:]):
        raise DdppError(
            f"the set's images are {tuple(images.shape[1:])} but the test images are "
            f"{tuple(test_images.shape[1:])}; they must come from the same dataset and size."
        )
    if test_labels.shape != (test_images.shape[0],) or test_images.shape[0] == 0:
        raise DdppError("the test split is empty or its labels do not match its images.")
    for name, values in (("set", labels), ("test", test_labels)):
        if int(values.min()) < 0 or int(values.max()) >= num_classes:
            raise DdppError(
                f"the {name} labels run from {int(values.min())} to {int(values.max())}, "
                f"outside the {num_classes} classes 0…{num_classes - 1}."
            )


def _run_network(
    config: EvalConfig, arch: str, run: int, images: torch.Tensor, num_classes: int
) -> torch.nn.Module:
    """Run ``run``'s fresh network for images like ``images``: the same draw alone or batched."""
    channels, height, width = (int(s) for s in images.shape[1:])
    with seeded(derive_seed(config.seed, "eval", arch, run)):
        return models.create(arch, channels, num_classes, (height, width))


def _run_generator(config: EvalConfig, arch: str, run: int) -> torch.Generator:
    """Run ``run``'s stream of batch orders and DSA draws: the same alone or batched."""
    return make_generator(config.seed, "eval", arch, run, "train")


def _run_optimizer(config: EvalConfig, parameters: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        parameters, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _decay_lr(config: EvalConfig, optimizer: torch.optim.Optimizer, lr: float, epoch: int) -> None:
    """Step schedule: ``lr`` × LR_DECAY once half of the epochs are done."""
    if epoch == config.epochs // 2:
        for group in optimizer.param_groups:
            group["lr"] = lr * LR_DECAY


def _train_and_test(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    arch: str,
    num_classes: int,
    lr: float,
    config: EvalConfig,
    run: int,
    device: torch.device | str,
    on_epoch: Callable[[int, int], None] | None,
) -> tuple[float, bool]:
    """:func:`train_and_test`, also saying whether training diverged (and stopped early)."""
    device = torch.device(device)
    model = _run_network(config, arch, run, images, num_classes).to(device)
    generator = _run_generator(config, arch, run)
    dsa = augment.DSA(config.dsa_strategy)
    optimizer = _run_optimizer(config, model.parameters(), lr)
    x, y = images.to(device), labels.to(device)
    diverged = False
    for epoch in range(1, config.epochs + 1):
        loss = train_epoch(
            model, x, y, optimizer, batch_size=config.batch_size, dsa=dsa, generator=generator
        )
        if on_epoch is not None:
            on_epoch(epoch, config.epochs)
        if not math.isfinite(loss):
            diverged = True  # further epochs cannot recover; test what we have
            break
        _decay_lr(config, optimizer, lr, epoch)
    return measure_accuracy(model, test_images.to(device), test_labels.to(device)), diverged


def measure_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One pass over the test split in evaluation mode: correct predictions / test images."""
    correct = int((predict(model, images) == labels).sum())
    return correct / int(labels.shape[0])


def _train_and_test_group(
    sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    arch: str,
    num_classes: int,
    lr: float,
    config: EvalConfig,
    runs: Sequence[int],
    device: torch.device,
    on_epoch: Callable[[int, int, int], None] | None,
) -> list[tuple[float, bool]]:
    """:func:`_train_and_test` for runs ``runs`` (run ``runs[k]`` on ``sets[k]``) at once.

    A run whose loss becomes non-finite is tested with its parameters from that epoch, as the
    sequential loop does; the others train on.
    """
    stacked = batched.StackedNetworks(
        [_run_network(config, arch, run, sets[0][0], num_classes).to(device) for run in runs]
    )
    generators = [_run_generator(config, arch, run) for run in runs]
    dsa = augment.DSA(config.dsa_strategy)
    optimizer = _run_optimizer(config, stacked.parameters(), lr)
    on_device = [(x.to(device), y.to(device)) for x, y in sets]
    stopped: dict[int, dict[str, torch.Tensor]] = {}  # member -> state when it diverged
    for epoch in range(1, config.epochs + 1):
        losses = batched.train_epoch(
            stacked, on_device, optimizer, batch_size=config.batch_size, dsa=dsa,
            generators=generators,
        )  # fmt: skip
        for k, run in enumerate(runs):
            if k in stopped:
                continue
            if on_epoch is not None:
                on_epoch(run, epoch, config.epochs)
            if not math.isfinite(losses[k]):
                stopped[k] = stacked.member_state(k)
        if len(stopped) == len(runs):
            break
        _decay_lr(config, optimizer, lr, epoch)
    for k, state in stopped.items():
        stacked.load_member_state(k, state)
    predicted = stacked.predict(test_images.to(device))
    correct = (predicted == test_labels.to(device)).sum(dim=1).tolist()
    total = int(test_labels.shape[0])
    return [(int(c) / total, k in stopped) for k, c in enumerate(correct)]


def train_and_test(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    arch: str,
    num_classes: int,
    lr: float,
    config: EvalConfig,
    run: int,
    device: torch.device | str,
    on_epoch: Callable[[int, int], None] | None = None,
) -> float:
    """Train one fresh ``arch`` network on ``images`` (run ``run``), return its test accuracy.

    SGD with ``config.momentum``/``config.weight_decay`` at ``lr``, ×0.1 after epoch
    ``config.epochs // 2``; DSA from ``config.dsa_strategy``; evaluation mode for the test pass.
    A run whose loss becomes non-finite stops training and is tested as it is.
    """
    acc, _ = _train_and_test(
        images, labels, test_images, test_labels, arch=arch, num_classes=num_classes, lr=lr,
        config=config, run=run, device=device, on_epoch=on_epoch,
    )  # fmt: skip
    return acc


def protocol(config: EvalConfig, lr: float, lr_source: str) -> dict[str, Any]:
    """The protocol as recorded in every result (and printed by ``--json``)."""
    return {
        **asdict(config),
        "lr": lr,
        "lr_source": lr_source,
        "lr_schedule": f"x{LR_DECAY} after epoch {config.epochs // 2}",
        "optimizer": "SGD",
        "loss": "cross-entropy (hard labels)",
        "std": STD_KIND,
        "accuracy": "fraction of the test split classified correctly, after the last epoch",
    }


# ------------------------------------------------------------------- evaluation records

RECORDS_FORMAT = "ddpp.evaluation/1"
RECORDS_DIRNAME = "evaluations"


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the dtype, shape and bytes of ``tensors`` (any device), hex."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{flat.dtype}{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_records_dir(set_path: Path | None = None) -> Path:
    """Where ``evaluate``/``crossarch`` keep the finished runs of a set by default.

    A set in a run folder (``RUN/best.safetensors``, ``RUN/distilled.safetensors``) or the run
    folder itself: ``RUN/evaluations/``. Any other set file ``DIR/NAME.safetensors``:
    ``DIR/NAME.eval/``. No file (a baseline): the ddpp data folder's ``evaluations/``. File
    names inside carry a hash of the set, test split and protocol, so one folder can hold the
    records of many evaluations without mixing them.
    """
    if set_path is None:
        return platformdirs.user_data_path("ddpp") / RECORDS_DIRNAME
    set_path = Path(set_path)
    if set_path.is_dir():
        return set_path / RECORDS_DIRNAME
    if set_path.name in RUN_SET_NAMES:
        return set_path.parent / RECORDS_DIRNAME
    return set_path.with_name(f"{set_path.stem}.eval")


def evaluation_identity(
    first_set: tuple[torch.Tensor, torch.Tensor],
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    config: EvalConfig,
    lr: float,
) -> dict[str, Any]:
    """What a recorded run must share with a new one to be reused in its place.

    The set (content hash of run 0's images and labels), the test split as transformed (hash),
    the class count, the protocol (every :class:`EvalConfig` field but ``runs``, since run r does
    not depend on how many follow) and the learning rate actually used.
    """
    settings = asdict(config)
    del settings["runs"]
    return {
        "set_sha256": tensor_digest(*first_set),
        "test_sha256": tensor_digest(test_images, test_labels),
        "num_classes": num_classes,
        "protocol": {**settings, "lr": lr},
    }


@dataclass(frozen=True)
class EvalRecords:
    """The finished runs of one evaluation, kept in ``<folder>/<arch>-<hash>.json``.

    Each write replaces the whole file atomically (temporary file, fsync, ``os.replace``).
    """

    path: Path
    identity: dict[str, Any]
    runs: dict[int, dict[str, Any]]

    @classmethod
    def open(cls, folder: Path, identity: dict[str, Any]) -> EvalRecords:
        """The records of ``identity`` in ``folder`` (none yet when the file is absent).

        DdppError when the file is unreadable or records another evaluation than its name says.
        """
        text = json.dumps(identity, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        arch = identity["protocol"]["arch"]
        path = Path(folder) / f"{arch}-{key}.json"
        if not path.is_file():
            return cls(path, identity, {})
        try:
            content = json.loads(path.read_text())
            ok = content.get("format") == RECORDS_FORMAT and content.get("identity") == identity
            runs = {int(run): dict(entry) for run, entry in content["runs"].items()}
            for entry in runs.values():
                if not (
                    isinstance(entry["accuracy"], float)
                    and isinstance(entry["diverged"], bool)
                    and isinstance(entry["train_size"], int)
                ):
                    raise ValueError("a run lacks its accuracy, diverged flag or train size")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DdppError(
                f"{path} is not readable evaluation records ({exc}); delete it to evaluate anew."
            ) from None
        if not ok:
            raise DdppError(
                f"{path} records another set or protocol than its name says; delete it to "
                "evaluate anew."
            )
        return cls(path, identity, runs)

    def save(self) -> None:
        content = {
            "format": RECORDS_FORMAT,
            "ddpp_version": __version__,
            "identity": self.identity,
            "runs": {str(run): self.runs[run] for run in sorted(self.runs)},
        }
        store.atomic_write_text(self.path, json.dumps(content, indent=2) + "\n")


# run -> (accuracy, diverged, train-set size, seconds)
_Done = dict[int, tuple[float, bool, int, float]]


def evaluate_per_run(
    set_for_run: SetForRun,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    config: EvalConfig,
    lr: float | None = None,
    device: torch.device | str = "cpu",
    on_event: EventCallback | None = None,
    parallel: int = 1,
    world: World | None = None,
    records: Path | None = None,
) -> EvalResult:
    """:func:`evaluate_images` where run ``r`` trains on ``set_for_run(r)`` (e.g. a new random
    subset per run, so that the std covers the choice of subset as in the DC benchmark).

    ``parallel`` runs train at once as one batched model; under torchrun (``world``) each rank
    trains its share of the runs and every rank returns the whole result.

    ``records`` (a folder, e.g. :func:`default_records_dir`): every finished run is written
    there at once (a batch of ``parallel`` runs together), and runs found there for the same
    :func:`evaluation_identity` are taken instead of trained again, so a rerun after a kill
    continues with the first missing run and returns what an uninterrupted evaluation would.
    """
    emit = on_event or (lambda event: None)
    parallel = batched.check_parallel(parallel)
    world = world or World()
    device = torch.device(device)
    effective_lr, lr_source = resolve_lr(config, lr)
    test_x, test_y = test_images.to(device), test_labels.to(device)
    started = time.perf_counter()
    book, done = None, {}
    if records is not None:
        identity = evaluation_identity(
            set_for_run(0), test_images, test_labels, num_classes=num_classes, config=config,
            lr=effective_lr,
        )  # fmt: skip
        book = EvalRecords.open(records, identity)
        done = _recorded_runs(book, config, emit)

    def keep(runs: Sequence[int]) -> None:
        if book is not None and world.is_main:
            _record(book, done, runs, device, parallel)

    missing = [run for run in range(config.runs) if run not in done]
    for group in batched.groups(world.shard(missing), parallel):
        sets = [set_for_run(run) for run in group]
        for images, labels in sets:
            _check_images(images, labels, test_images, test_labels, num_classes)
        for run in group:
            emit(RunStarted(config.arch, run, config.runs, config.epochs))
        group_started = time.perf_counter()
        outcomes = _train_group(
            group, sets, test_x, test_y, num_classes=num_classes, lr=effective_lr,
            config=config, device=device, emit=emit,
        )  # fmt: skip
        seconds = (time.perf_counter() - group_started) / len(group)
        for run, (images, _), (acc, bad) in zip(group, sets, outcomes, strict=True):
            done[run] = (acc, bad, int(images.shape[0]), seconds)
        keep(group)  # the runs of a batch are recorded together
        for run in group:
            emit(RunFinished(config.arch, run, config.runs, done[run][0], seconds, done[run][1]))
    if world.distributed:
        keep(_gather_runs(world, done, config, emit))
    return _per_run_result(
        config, done, effective_lr, lr_source, test_images, num_classes, device,
        time.perf_counter() - started,
    )  # fmt: skip


def _recorded_runs(book: EvalRecords, config: EvalConfig, emit: EventCallback) -> _Done:
    """The runs ``book`` already holds (each announced as a resumed RunFinished)."""
    done: _Done = {}
    for run in range(config.runs):
        if run in book.runs:
            entry = book.runs[run]
            done[run] = (entry["accuracy"], entry["diverged"], entry["train_size"], 0.0)
            emit(
                RunFinished(
                    config.arch, run, config.runs, entry["accuracy"], 0.0, entry["diverged"],
                    resumed=True,
                )
            )  # fmt: skip
    return done


def _record(
    book: EvalRecords, done: _Done, runs: Sequence[int], device: torch.device, parallel: int
) -> None:
    """Add ``runs`` (finished, in ``done``) to the records and write them at once."""
    for run in runs:
        acc, bad, size, seconds = done[run]
        book.runs[run] = {
            "accuracy": acc, "diverged": bad, "train_size": size, "seconds": seconds,
            "device": str(device), "parallel": parallel,
        }  # fmt: skip
    book.save()


def _train_group(
    group: Sequence[int], sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    test_x: torch.Tensor, test_y: torch.Tensor, *, num_classes: int, lr: float,
    config: EvalConfig, device: torch.device, emit: EventCallback,
) -> list[tuple[float, bool]]:  # fmt: skip
    """(accuracy, diverged) of each run of ``group``: as one batched model, or one at a time
    when there is one run or the runs' sets differ in size."""

    def on_epoch(run: int, epoch: int, epochs: int) -> None:
        emit(EpochFinished(config.arch, run, epoch, epochs))

    sizes = [int(images.shape[0]) for images, _ in sets]
    if len(group) > 1 and len(set(sizes)) > 1:
        emit(Notice(f"runs {group} train on sets of different sizes; one at a time instead."))
    if len(group) > 1 and len(set(sizes)) == 1:
        return _train_and_test_group(
            sets, test_x, test_y, arch=config.arch, num_classes=num_classes, lr=lr,
            config=config, runs=group, device=device, on_epoch=on_epoch,
        )  # fmt: skip
    return [
        _train_and_test(
            images, labels, test_x, test_y, arch=config.arch, num_classes=num_classes, lr=lr,
            config=config, run=run, device=device, on_epoch=functools.partial(on_epoch, run),
        )
        for run, (images, labels) in zip(group, sets, strict=True)
    ]  # fmt: skip


def _gather_runs(world: World, done: _Done, config: EvalConfig, emit: EventCallback) -> list[int]:
    """Under torchrun: add the runs the other ranks trained to ``done``; returns them."""
    mine = set(done)
    others = []
    for part in world.gather(done):
        for run, (acc, bad, size, seconds) in part.items():
            if run not in mine:  # trained by another rank
                done[run] = (acc, bad, size, seconds)
                others.append(run)
                emit(RunFinished(config.arch, run, config.runs, acc, seconds, bad))
    return others


def _per_run_result(
    config: EvalConfig, done: _Done, lr: float, lr_source: str, test_images: torch.Tensor,
    num_classes: int, device: torch.device, seconds: float,
) -> EvalResult:  # fmt: skip
    """Every run's accuracy with mean ± std and the protocol followed."""
    accuracies = [done[run][0] for run in range(config.runs)]
    diverged = [run for run in range(config.runs) if done[run][1]]
    sizes = [done[run][2] for run in range(config.runs)]
    mean, std = summarize(accuracies)
    record = protocol(config, lr, lr_source)
    record.update(
        train_size=sizes[0] if len(set(sizes)) == 1 else sizes,
        test_size=int(test_images.shape[0]),
        image_shape=list(test_images.shape[1:]),
        num_classes=num_classes,
        diverged_runs=diverged,
        device=str(device),
    )
    return EvalResult(
        arch=config.arch, accuracies=accuracies, mean=mean, std=std, seconds=seconds, lr=lr,
        protocol=record,
    )  # fmt: skip


def evaluate_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    config: EvalConfig,
    lr: float | None = None,
    device: torch.device | str = "cpu",
    on_event: EventCallback | None = None,
    parallel: int = 1,
    world: World | None = None,
    records: Path | None = None,
) -> EvalResult:
    """Run the protocol ``config.runs`` times on one set of (model-input space) images.

    ``test_images`` must already be transformed like ``images``. The learning rate is
    ``config.lr`` when given, else ``lr`` (the set's learned one), else 0.01. ``parallel``,
    ``world`` and ``records`` as in :func:`evaluate_per_run`.
    """
    return evaluate_per_run(
        lambda run: (images, labels), test_images, test_labels, num_classes=num_classes,
        config=config, lr=lr, device=device, on_event=on_event, parallel=parallel, world=world,
        records=records,
    )  # fmt: skip


# ------------------------------------------------------------------------- distilled sets

RUN_SET_NAMES = ("best.safetensors", "distilled.safetensors")


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
    test = data.load(
        info.name, data_root, "test", download=download, image_size=image_size, seed=data_seed
    )
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
    on_event: EventCallback | None = None,
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
    )  # fmt: skip
    return replace(result, protocol={**result.protocol, **_describe_set(distilled, preprocessing)})


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
    on_event: EventCallback | None = None,
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
        )  # fmt: skip
        results[arch_config.arch] = replace(
            result, protocol={**result.protocol, **_describe_set(distilled, preprocessing)}
        )
    return results
