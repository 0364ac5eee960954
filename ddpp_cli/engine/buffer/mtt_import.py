"""Importing MTT's expert trajectories (``ddpp buffer --import``): its ``replay_buffer_*.pt``
files converted, one expert at a time, into a ddpp buffer folder."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data, models, store, zca
from ddpp_cli.engine.buffer.events import BufferStarted, BufferSummary, ExpertFinished, ExpertRecord
from ddpp_cli.engine.buffer.files import (
    MANIFEST_FORMAT,
    BufferManifest,
    check_expert_file,
    data_description,
    expert_files,
    expert_metadata,
    expert_path,
    read_manifest,
    write_manifest,
)
from ddpp_cli.engine.device import resolve_device, seeded
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.faults import StageFailed
from ddpp_cli.engine.foreign_tools import normalization_source
from ddpp_cli.engine.functional import ParamLayout
from ddpp_cli.engine.layout import MANIFEST_NAME, ZCA_NAME
from ddpp_cli.engine.preprocess import Normalization, prepare

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
    "channels": "--channels",
}
# MTT's buffer.py saves to <buffer_path>/<dataset>[_NO_ZCA]/<model>/replay_buffer_<n>.pt, with
# the _NO_ZCA suffix only for CIFAR10/CIFAR100 trained without --zca.
_MTT_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "tiny": "tinyimagenet"}
_MTT_ZCA_SUFFIX_DATASETS = ("cifar10", "cifar100")
_MTT_MODEL_FOLDER = re.compile(r"^(convnet|alexnet|vgg|resnet|lenet|mlp)", re.IGNORECASE)


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

    ddpp's table values, except where MTT's ``utils.get_dataset`` used another dataset's
    (CIFAR-100: CIFAR-10's; the table is :mod:`ddpp_cli.engine.foreign_tools`).
    """
    entry = data.info(normalization_source("mtt", dataset))
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


def load_mtt_file(path: Path) -> list[list[list[torch.Tensor]]]:
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


def flatten_mtt_epoch(tensors: list[torch.Tensor], layout: ParamLayout, where: str) -> torch.Tensor:
    shapes = [tuple(t.shape) for t in tensors]
    if [math.prod(s) for s in shapes] != [math.prod(s) for s in layout.shapes]:
        raise DdppError(
            f"{where}: parameter shapes {shapes[:4]}… do not match the architecture's "
            f"{list(layout.shapes)[:4]}…; check --dataset and --arch."
        )
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def _imported_so_far(folder: Path, config: dict[str, Any]) -> BufferManifest | None:
    """The manifest of an earlier import of the same source and settings into ``folder``.

    None for an empty folder; DdppError for a folder holding anything else.
    """
    if (folder / MANIFEST_NAME).is_file():
        manifest = read_manifest(folder)
        previous = manifest.config
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
        origin = expert_metadata(path).get("source") or {}
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
    on_event: OnEvent | None = None,
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
        target.described["epochs"] = int(target.manifest.epochs)
        for path in existing.values():
            check_expert_file(path, target.described["epochs"], target.layout.numel)
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
    manifest_path = write_manifest(folder, target.described)
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
    emit: OnEvent,
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
        content = None if skip else load_mtt_file(path)
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
        write_manifest(target.folder, target.described)


@dataclass
class _ImportTarget:
    """What an import writes into its folder: the settings, the manifest so far, the layout."""

    folder: Path
    config: dict[str, Any]
    manifest: BufferManifest | None  # of an earlier import into the folder
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
        "data": data_description(prepared),
    }
    started = BufferStarted(
        folder=folder, total=None, existing=0, train_size=len(prepared.train.labels),
        test_size=len(prepared.test.labels), num_params=layout.numel,
        preprocessing=prepared.preprocessing.kind,
    )  # fmt: skip
    return _ImportTarget(folder, config, manifest, described, layout, zca_path, started)


def _convert_file(
    target: _ImportTarget, path: Path, content: list, existing: dict[int, Path],
    records: list[ExpertRecord], experts: int | None, emit: OnEvent,
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
            write_manifest(target.folder, described)  # the manifest before any expert file
        if epochs != described["epochs"]:
            raise DdppError(
                f"{where} has {epochs} epochs but the experts before it have "
                f"{described['epochs']}; MTT files of one buffer must agree."
            )
        if index in existing:
            records.append(ExpertRecord(index, existing[index], [], resumed=True))
        else:
            params = torch.stack([flatten_mtt_epoch(e, target.layout, where) for e in expert])
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
