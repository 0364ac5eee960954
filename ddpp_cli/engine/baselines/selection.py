"""A prepared baseline and its coresets: the pool and test split (:class:`Baseline`), the
coreset of each evaluation run (selected by the registry's coreset, computed once), the trained
selections kept beside the evaluation records, and a coreset packed as a set."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import coresets, data, store
from ddpp_cli.engine.baselines.config import BaselineConfig
from ddpp_cli.engine.distilled import DistilledSet, file_sha256
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import tensor_digest
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.preprocess import Preprocessing


@dataclass(frozen=True)
class SelectionReused:
    """A baseline's trained selection (herding's features, forgetting's counts) was taken from
    ``path``, kept by an earlier run of the same selection, instead of training again."""

    path: Path


@dataclass(frozen=True, eq=False)
class Baseline:
    """A prepared baseline: the (transformed) training pool and test split, how to view them,
    and where its selection network comes from (``expert_file``, ``feature_arch``)."""

    config: BaselineConfig
    train: data.ImageSplit
    test_images: torch.Tensor
    test_labels: torch.Tensor
    preprocessing: Preprocessing
    preprocessing_info: dict[str, Any]
    zca_path: Path | None
    data_seed: int = 0  # the seed the data were loaded with (split of single-folder sets)
    image_size: int | None = None  # the --image-size the data were loaded at (None: native)
    expert_file: Path | None = None  # herding's features with a buffer
    feature_arch: str = "convnet"
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _selection: dict[str, Any] = field(default_factory=dict, repr=False)

    def indices(
        self,
        run: int = 0,
        device: torch.device | str = "cpu",
        on_event: OnEvent | None = None,
        kept_in: Path | None = None,
        keep: bool = True,
    ) -> torch.Tensor:
        """The coreset of evaluation run ``run`` (random: a new subset per run; the other
        methods: the same for every run). Computed once per distinct coreset; training a
        selection network reports its epochs to ``on_event`` (:class:`coresets.FeatureEpoch`,
        :class:`coresets.ForgettingEpoch`). With ``kept_in`` (an evaluation's records folder)
        a trained selection is kept there (unless ``keep`` is false: a torchrun rank other than
        0, whose choice is replaced by rank 0's) and taken again by a rerun of the same
        selection (:meth:`selection_file`) instead of training its network again."""
        key = run if self.coreset.per_run else 0
        if key not in self._cache:
            emit = on_event or (lambda event: None)
            if self.coreset.per_run:
                found, _ = self.coreset.select(self.request(), key, device, emit)
            else:
                found, record = self._kept_selection(device, emit, kept_in, keep)
                self._selection.update(record)
            self._cache[key] = found
        return self._cache[key]

    @property
    def coreset(self) -> coresets.CoresetInfo:
        """The registry's entry for this baseline's method."""
        return coresets.get_coreset(self.config.method)

    def request(self) -> coresets.CoresetRequest:
        """What the coreset's selection is given: the pool, the settings, the feature network
        and the coreset's own options."""
        c = self.config
        options = tuple((name, getattr(c, name)) for name in self.coreset.options)
        return coresets.CoresetRequest(
            self.train, c.ipc, c.seed, arch=self.feature_arch, expert_file=self.expert_file,
            options=options,
        )  # fmt: skip

    def selection_identity(self) -> dict[str, Any]:
        """What a kept selection must share with this one to be taken: the settings, the pool
        (content hash, as transformed), the feature network's architecture and, for herding
        on a buffer's expert, the expert file's hash."""
        expert = None if self.expert_file is None else file_sha256(self.expert_file)
        return {
            "format": store.SELECTION_FORMAT,
            "config": self.config.describe(),
            "pool_sha256": tensor_digest(self.train.images, self.train.labels),
            "feature_arch": self.feature_arch,
            "expert_sha256": expert,
        }

    def selection_file(self, folder: Path, identity: dict[str, Any] | None = None) -> Path:
        """Where the trained selection of this baseline (``identity``: its
        :meth:`selection_identity`, computed when not given) is kept in ``folder``."""
        identity = self.selection_identity() if identity is None else identity
        text = json.dumps(identity, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return Path(folder) / f"selection-{self.config.method}-{digest}.safetensors"

    def _kept_selection(
        self,
        device: torch.device | str,
        emit: OnEvent,
        kept_in: Path | None,
        keep: bool,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """:meth:`_select`, or the selection kept in ``kept_in`` by an earlier run of the same
        selection (herding-random trains nothing and is not kept). A kept file that cannot be
        read or is not this selection's is computed again and replaced."""
        if kept_in is None or not self.coreset.trained:
            return self._select(device, emit)
        identity = json.loads(json.dumps(self.selection_identity()))  # hashes the pool once
        path = self.selection_file(kept_in, identity)
        kept = read_selection(path, identity, len(self.train.labels))
        if kept is not None:
            emit(SelectionReused(path))
            return kept
        found, record = self._select(device, emit)
        if not keep:
            return found, record
        with contextlib.suppress(OSError):  # keeping it is a convenience; the run goes on
            Path(kept_in).mkdir(parents=True, exist_ok=True)
            store.write(
                path, {"indices": found}, store.SELECTION_FORMAT,
                {"identity": identity, "selection": record},
            )  # fmt: skip
        return found, record

    def selection(self) -> dict[str, Any]:
        """How the fixed coreset was chosen (``features`` or ``forgetting`` record); empty for
        random, or before :meth:`indices` computed it."""
        return dict(self._selection)

    def _select(
        self, device: torch.device | str, emit: OnEvent
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.coreset.select(self.request(), 0, device, emit)

    def make_set(self, indices: torch.Tensor, run: int = 0) -> DistilledSet:
        # data_seed: the seed of the 80/20 split of single-folder datasets this pool came from.
        settings = {
            **self.config.describe(), "run": run, "data_seed": self.data_seed,
            "image_size": self.image_size, **self.selection(),
        }  # fmt: skip
        return coreset_set(
            self.train, indices, dataset=data.info(self.config.dataset).name,
            preprocessing=self.preprocessing_info, source=self.config.method,
            seed=self.config.seed, settings=settings,
        )  # fmt: skip


def read_selection(
    path: Path, identity: dict[str, Any], pool_size: int
) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """The indices and record of the selection kept at ``path`` when it is one of ``identity``
    and well formed (indices a 1-D integer tensor into a pool of ``pool_size``, the record an
    object); None when absent, unreadable, wrongly typed or another selection's."""
    if not path.is_file():
        return None
    try:
        kept = store.read(path, store.SELECTION_FORMAT)
    except DdppError:
        return None
    indices, record = kept.tensors.get("indices"), kept.metadata.get("selection")
    if (
        kept.metadata.get("identity") != identity
        or not isinstance(record, dict)
        or indices is None
        or indices.ndim != 1
        or indices.is_floating_point()
        or indices.dtype == torch.bool
        or (indices.numel() and not (0 <= int(indices.min()) <= int(indices.max()) < pool_size))
    ):
        return None
    return indices, record


def coreset_set(
    train: data.ImageSplit,
    indices: torch.Tensor,
    *,
    dataset: str,
    preprocessing: dict[str, Any],
    source: str,
    seed: int | None = None,
    settings: dict[str, Any] | None = None,
) -> DistilledSet:
    """Pack ``train[indices]`` (model-input space) as a distilled-set record (``lr=None``)."""
    return DistilledSet(
        images=train.images[indices].clone(),
        labels=train.labels[indices].clone(),
        lr=None,
        dataset=dataset,
        class_names=train.class_names,
        preprocessing=preprocessing,
        source=source,
        arch=None,
        settings=dict(settings or {}),
        seed=seed,
    )
