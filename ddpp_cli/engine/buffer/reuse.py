"""Finding a buffer to reuse (``ddpp run``): whether a buffer fits a run's settings, the search
of the buffers folder for the best fitting one, and the folder a new buffer is trained into.

A buffer is reused when it fits (same dataset, architecture and preprocessing, every training
setting, long enough experts, enough of them); a new buffer never goes into a folder of other
settings. The profile a run uses is passed in (its name and its buffer subsets), so this module
needs nothing of the pipeline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from ddpp_cli.engine import data, store
from ddpp_cli.engine.buffer.files import (
    BufferManifest,
    default_buffer_dir,
    expert_files,
    read_manifest,
)
from ddpp_cli.engine.buffer.train import BufferConfig
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice, OnEvent
from ddpp_cli.engine.layout import BUFFERS_DIRNAME, MANIFEST_NAME, data_home

Subsets = tuple[int | None, int | None]  # a profile's buffer (train_subset, test_subset)
NO_SUBSETS: Subsets = (None, None)

# Settings of :meth:`BufferConfig.identity` that a reused buffer may differ in: more epochs than
# the distillation needs are fine, and the test subset only changes the accuracies recorded.
_REUSE_IGNORES = ("epochs", "test_subset")


def buffer_folder(config: BufferConfig, profile: str, subsets: Subsets = NO_SUBSETS) -> Path:
    """The folder a run trains its buffer into when none fits.

    ``ddpp buffer``'s settings (its default 50 epochs, no subsets) share its default folder; the
    settings of a profile with buffer ``subsets`` (e.g. quick's) have their own (``…-quick``);
    other settings get a folder named after a hash of them, so that different settings never
    meet in one folder.
    """
    base = default_buffer_dir(config.dataset, config.arch, config.zca)
    standard = BufferConfig(
        dataset=config.dataset, arch=config.arch, zca=config.zca,
        image_size=config.image_size, seed=config.seed,
    )  # fmt: skip
    identity = config.identity()
    if identity == standard.identity():
        return base
    profiled = replace(
        standard, epochs=config.epochs, train_subset=subsets[0], test_subset=subsets[1]
    )
    if subsets != NO_SUBSETS and identity == profiled.identity():
        return base.with_name(f"{base.name}-{profile}")
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return base.with_name(f"{base.name}-{digest}")


def buffer_difference(
    manifest: BufferManifest,
    config: BufferConfig,
    needed_epochs: int,
    source: Path | None = None,
) -> str:
    """Why a buffer (its manifest) cannot serve a run that ``config`` describes, in
    :func:`store.describe_difference`'s words; "" when it can.

    Every training setting must match (dataset, architecture, preprocessing, image size, lr,
    momentum, weight decay, batch size, DSA, seed, train subset), and the experts must have at
    least ``needed_epochs`` epochs. For datasets that are a user's folders (``imagefolder``,
    ``covid19-cxr``) the buffer must also come from the same folder, ``source``. An imported MTT
    buffer records none of the training settings, so it is only used when named with
    ``--buffer``.
    """
    saved = dict(manifest.config)
    try:
        saved["dataset"] = data.info(manifest.dataset).name
    except DdppError:
        saved["dataset"] = manifest.dataset
    saved["arch"] = manifest.arch
    kind = manifest.preprocessing_kind
    saved["zca"] = manifest.is_zca if kind is not None else saved.get("zca")
    wanted = config.identity()
    for name in _REUSE_IGNORES:
        saved.pop(name, None)
        wanted.pop(name, None)
    saved.pop("imported_from", None)
    differences = [store.describe_difference(saved, wanted)]
    epochs = manifest.epochs
    if epochs is None or epochs < needed_epochs:
        differences.append(f"epochs: {epochs!r} there vs at least {needed_epochs} needed")
    differences.append(_source_difference(manifest, config, source))
    return "; ".join(text for text in differences if text)


def _source_difference(manifest: BufferManifest, config: BufferConfig, source: Path | None) -> str:
    """ "data: … there vs … now" when a folder dataset's buffer was made from another folder."""
    if source is None or data.info(config.dataset).num_classes is not None:
        return ""  # a named dataset is the same data wherever its files are
    there = manifest.source
    here = str(Path(source).resolve())
    return "" if there == here else f"data: {there!r} there vs {here!r} now"


def fits(manifest: BufferManifest, config: BufferConfig, needed_epochs: int) -> bool:
    """Whether a buffer (its manifest) can serve a distillation that ``config`` describes."""
    return not buffer_difference(manifest, config, needed_epochs)


@dataclass(frozen=True)
class BufferSearch:
    """The outcome of :func:`search_buffers`."""

    found: Path | None  # the fitting buffer with the most experts
    nearest: tuple[Path, str] | None  # when none fits: the closest buffer and what differs


def search_buffers(
    config: BufferConfig,
    needed_epochs: int,
    root: Path | None = None,
    source: Path | None = None,
) -> BufferSearch:
    """The complete buffers under ``root`` (default: the ddpp buffers folder) that fit
    ``config`` with at least ``config.experts`` finished experts; the one with the most wins.
    When none fits, the buffer of the same dataset differing in the fewest settings (with the
    difference) says why."""
    root = Path(root) if root is not None else data_home() / BUFFERS_DIRNAME
    if not root.is_dir():
        return BufferSearch(None, None)
    best: tuple[int, str, Path] | None = None
    nearest: tuple[int, Path, str] | None = None
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            manifest = read_manifest(folder)
        except DdppError:
            continue
        difference = buffer_difference(manifest, config, needed_epochs, source)
        count = len(expert_files(folder))
        if not difference and count < config.experts:
            difference = f"experts: {count} there vs {config.experts} needed"
        if not difference:
            if best is None or count > best[0]:
                best = (count, folder.name, folder)
        elif "dataset:" not in difference:  # a buffer of another dataset is no near miss
            rank = difference.count(";")
            if nearest is None or rank < nearest[0]:
                nearest = (rank, folder, difference)
    return BufferSearch(None if best is None else best[2], None if nearest is None else nearest[1:])


def find_reusable_buffer(
    config: BufferConfig, needed_epochs: int, root: Path | None = None
) -> Path | None:
    """The buffer :func:`search_buffers` finds (None when none fits)."""
    return search_buffers(config, needed_epochs, root).found


def training_folder(
    config: BufferConfig, profile: str, source: Path | None = None,
    subsets: Subsets = NO_SUBSETS,
) -> Path:  # fmt: skip
    """Where a run trains a new buffer: :func:`buffer_folder`, unless that folder holds a buffer
    of other settings (e.g. one ``ddpp buffer --lr …`` made in its default folder), which is
    never overwritten or extended: then the folder named after a hash of the settings (and,
    for a folder dataset, of the ``source`` folder it is made from)."""
    folder = buffer_folder(config, profile, subsets)
    if (folder / MANIFEST_NAME).is_file():
        manifest = read_manifest(folder)
        other_data = _source_difference(manifest, config, source)
        if manifest.config != config.identity() or other_data:
            key = {**config.identity(), **({"source": str(source)} if other_data else {})}
            digest = json.dumps(key, sort_keys=True).encode()
            return folder.with_name(f"{folder.name}-{hashlib.sha256(digest).hexdigest()[:8]}")
    return folder


def check_finished(manifest: BufferManifest, folder: Path) -> None:
    """DdppError when the buffer at ``folder`` has fewer finished experts than it was made to
    have (its training was stopped): a run never distils from part of a buffer silently."""
    planned = manifest.planned_experts
    if planned is None:
        return  # an import, or a buffer made before ddpp recorded it
    finished = sum(1 for index in expert_files(folder) if index < planned)
    if finished < planned:
        raise DdppError(
            f"the buffer at {folder} is unfinished: {finished} of {planned} experts (its "
            "training was stopped); finish it by running the 'ddpp buffer' command that made it "
            f"again (its settings are in {MANIFEST_NAME}), or drop --buffer."
        )


def choose_buffer(
    config: BufferConfig, needed_epochs: int, buffer: Path | None, *, profile: str,
    subsets: Subsets = NO_SUBSETS, emit: OnEvent, source: Path | None = None,
    world: World | None = None,
) -> tuple[Path, bool]:  # fmt: skip
    """The buffer a run of ``profile`` (with its buffer ``subsets``) distills from, and whether
    it is reused (else it is to be trained).

    ``buffer`` (``--buffer``) holding a buffer is used as asked (with a Notice when its settings
    differ from ``config``); otherwise a buffer under the ddpp buffers folder whose every
    training setting matches is reused, else a new one is to be trained (a Notice names what
    the nearest one lacked). ``source`` is the folder the data is read from (it must match for
    a folder dataset). Under torchrun (``world``) rank 0's choice holds for every rank.
    """
    if buffer is not None and (Path(buffer) / MANIFEST_NAME).is_file():
        buffer_dir, reused = Path(buffer), True
        manifest = read_manifest(buffer_dir)
        check_finished(manifest, buffer_dir)
        difference = buffer_difference(manifest, config, needed_epochs, source)
        if difference:
            emit(Notice(f"{buffer_dir} differs from the run's settings ({difference}); using it "
                        "as --buffer asks."))  # fmt: skip
    elif buffer is not None:
        buffer_dir, reused = Path(buffer), False
    else:
        search = search_buffers(config, needed_epochs, source=source)
        buffer_dir, reused = search.found, search.found is not None
        if buffer_dir is None:
            buffer_dir = training_folder(config, profile, source, subsets)
            if search.nearest is not None and search.nearest[0] != buffer_dir:
                emit(Notice(f"not reusing {search.nearest[0]} ({search.nearest[1]}); training a "
                            f"new buffer in {buffer_dir}."))  # fmt: skip
    return (world or World()).from_main((buffer_dir, reused))  # one choice for every rank
