"""Coreset baselines evaluated under the same protocol as distilled sets (SPEC §7, Table I).

- random: ``ipc`` real training images per class, drawn uniformly; run ``r`` of an evaluation
  draws its own subset (seed derived from the run), so the std covers the choice of subset too.
- herding: per class, greedy mean matching (Welling 2009, as used by iCaRL and the DC benchmark)
  in the penultimate-layer features of a *trained* network (METHODS.md §5): the last snapshot of
  an expert of ``BaselineConfig.buffer``, else a ConvNet trained here for ``feature_epochs``.
- forgetting: the ``ipc`` most forgotten examples of each class (Toneva et al. 2019,
  :mod:`forgetting`), counted while training a ConvNet on the pool for ``forgetting_epochs``.
- herding-random: herding in the features of a randomly initialised ConvNet (ddpp's herding
  before issue 16; fast, but not the benchmark's baseline).

Herding, forgetting and herding-random are deterministic given the seed: every evaluation run
trains on the same coreset and the runs differ in the evaluated network only.

A coreset is returned as indices into the training split, and can be packed as a
:class:`DistilledSet` (``source`` = the method, ``lr=None``) with the dataset's preprocessing so
that ``evaluate``, ``crossarch`` and ``visualize`` treat it like a distilled set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpp_cli.engine import data, models, store, zca
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.buffer import expert_files, load_trajectory, read_manifest
from ddpp_cli.engine.device import derive_seed, make_generator, seeded
from ddpp_cli.engine.distilled import DistilledSet, file_sha256, zca_reference
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import (
    EvalConfig,
    EvalResult,
    evaluate_per_run,
    take_test_subset,
    tensor_digest,
)
from ddpp_cli.engine.forgetting import UNLEARNED, ForgettingConfig, forgetting_coreset
from ddpp_cli.engine.functional import ParamLayout, load_flat
from ddpp_cli.engine.layout import ZCA_NAME
from ddpp_cli.engine.preprocess import (
    PreparedData,
    Preprocessing,
    prepare,
)
from ddpp_cli.engine.training import train_epoch

METHODS = ("random", "herding", "forgetting", "herding-random")
FIXED_METHODS = ("herding", "forgetting", "herding-random")  # one coreset for every run
FEATURE_BATCH = 512


def check_ipc(train: data.ImageSplit, ipc: int) -> torch.Tensor:
    """Images per class of ``train``; DdppError when ``ipc`` < 1 or above the smallest class."""
    if ipc < 1:
        raise DdppError(f"--ipc must be at least 1 (got {ipc}).")
    counts = data.class_counts(train)
    smallest = int(counts.min())
    if ipc > smallest:
        label = int(counts.argmin())
        raise DdppError(
            f"--ipc {ipc} is more than class '{train.class_names[label]}' has ({smallest} "
            f"images); use --ipc {smallest} or less."
        )
    return counts


def random_coreset(train: data.ImageSplit, ipc: int, seed: int) -> torch.Tensor:
    """Indices of ``ipc`` uniformly drawn images per class, class-major (seeded)."""
    check_ipc(train, ipc)
    generator = make_generator(seed, "random_coreset")
    shuffled = data.shuffled_per_class(train.labels, train.num_classes, generator)
    return torch.cat([members[:ipc] for members in shuffled])


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy herding: step k picks the unused row that brings the mean of the k picked rows
    closest (Euclidean) to the mean of all rows; returns ``count`` row indices in pick order.

    The distance is computed as ‖k·μ − Σ_picked φ − φ_i‖ (METHODS.md §5), not divided by k, so
    that ties are exact where the features allow; a tie goes to the lowest index."""
    if features.ndim != 2 or not 1 <= count <= features.shape[0]:
        raise ValueError("herding needs (N, D) features and 1 <= count <= N")
    feats = features.detach().to(torch.float64)
    target = feats.mean(dim=0)
    total = torch.zeros_like(target)
    used = torch.zeros(feats.shape[0], dtype=torch.bool, device=feats.device)
    picks = []
    for k in range(1, count + 1):
        distance = ((k * target - total - feats) ** 2).sum(dim=1)
        distance[used] = float("inf")
        pick = int(distance.argmin())
        picks.append(pick)
        used[pick] = True
        total += feats[pick]
    return torch.tensor(picks, dtype=torch.int64)


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """Penultimate-layer embedding (the input of the model's last Linear layer), on the CPU."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    device = next(model.parameters()).device
    model.eval()
    try:
        for chunk in images.split(batch_size):
            model(chunk.to(device))
    finally:
        handle.remove()
    return torch.cat([c.flatten(1).cpu() for c in captured])


def herding_coreset(
    train: data.ImageSplit,
    ipc: int,
    *,
    arch: str = "convnet",
    seed: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Indices of ``ipc`` herding-selected images per class, class-major, in pick order.

    ``train`` is in model-input space (normalised or whitened); features come from a randomly
    initialised ``arch`` network seeded from ``derive_seed(seed, "herding", arch)``.
    """
    check_ipc(train, ipc)
    channels, height, width = (int(s) for s in train.images.shape[1:])
    with seeded(derive_seed(seed, "herding", arch)):
        model = models.create(arch, channels, train.num_classes, (height, width))
    features = embed(model.to(torch.device(device)), train.images)
    chosen = []
    for label in range(train.num_classes):
        members = torch.nonzero(train.labels == label).flatten()
        chosen.append(members[herding_order(features[members], ipc)])
    return torch.cat(chosen)


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


# ------------------------------------------------------------------ herding on trained features
#
# The DC benchmark's herding row uses the features of a network trained on the whole training
# set (DeepCore's herding.py; METHODS.md §5). The random-feature herding above stays, labelled
# "herding-random".

# Without a buffer, herding's feature network trains as long as an expert of ``ddpp buffer``
# (SPEC §5: 50 epochs), so that both sources give the same kind of network. A CPU budget lowers it.
HERDING_FEATURE_EPOCHS = 50


@dataclass(frozen=True)
class SelectionReused:
    """A baseline's trained selection (herding's features, forgetting's counts) was taken from
    ``path``, kept by an earlier run of the same selection, instead of training again."""

    path: Path


@dataclass(frozen=True)
class FeatureEpoch:
    """Progress event: one epoch of herding's feature network finished."""

    epoch: int  # 1-based
    epochs: int
    loss: float


@dataclass(frozen=True)
class FeatureSource:
    """Which trained network herding's features came from, for the set's metadata."""

    kind: str  # "expert" (a buffer's expert, last snapshot) or "trained" (trained here)
    arch: str
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "arch": self.arch, **self.details}


def expert_feature_network(
    expert_file: Path, arch: str, train: data.ImageSplit
) -> tuple[nn.Module, FeatureSource]:
    """``arch`` with the parameters of the last snapshot of the expert in ``expert_file``.

    ``train`` must be in the model-input space the expert was trained in (the buffer's
    normalisation or ZCA; ``preprocess.recorded_normalization`` of its manifest, or its
    ``zca.safetensors``). DdppError when the expert belongs to another architecture, number of
    classes or image size.
    """
    channels, height, width = (int(s) for s in train.images.shape[1:])
    model = models.create(arch, channels, train.num_classes, (height, width))
    layout = ParamLayout.of(model)
    trajectory = load_trajectory(Path(expert_file), layout)
    recorded = trajectory.metadata.get("layout")
    if recorded is not None:
        layout.check_compatible(ParamLayout.from_json(recorded), f"expert '{expert_file}'")
    load_flat(model, trajectory.params[-1])
    source = FeatureSource(
        "expert",
        arch,
        {
            "expert_file": str(Path(expert_file).resolve()),
            "expert_sha256": file_sha256(Path(expert_file)),
            "snapshot": trajectory.epochs,
        },
    )
    return model, source


def train_feature_network(
    train: data.ImageSplit,
    arch: str,
    *,
    epochs: int = HERDING_FEATURE_EPOCHS,
    seed: int,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, FeatureSource]:
    """A fresh ``arch`` trained on all of ``train`` with the expert recipe of ``ddpp buffer``
    (SGD lr 0.01, momentum 0, weight decay 0, batch 256, DSA; SPEC §5) for ``epochs`` epochs.

    ``on_epoch(epoch, epochs, loss)`` reports progress.
    """
    if epochs < 1:
        raise DdppError(f"the herding feature network needs at least 1 epoch (got {epochs}).")
    channels, height, width = (int(s) for s in train.images.shape[1:])
    with seeded(derive_seed(seed, "herding-features", arch)):
        model = models.create(arch, channels, train.num_classes, (height, width))
    device = torch.device(device)
    model = model.to(device)
    images, labels = train.images.to(device), train.labels.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0, weight_decay=0.0)
    generator = make_generator(seed, "herding-features-batches")
    for epoch in range(1, epochs + 1):
        loss = train_epoch(
            model, images, labels, optimizer, batch_size=256, dsa=DSA(), generator=generator
        )
        if not loss == loss or loss == float("inf"):
            raise DdppError(f"the herding feature network diverged at epoch {epoch}.")
        if on_epoch is not None:
            on_epoch(epoch, epochs, loss)
    recipe = {"epochs": epochs, "lr": 0.01, "momentum": 0.0, "batch_size": 256, "dsa": True}
    return model, FeatureSource("trained", arch, {"seed": seed, **recipe})


def herding_on_features(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int
) -> torch.Tensor:
    """Per-class greedy herding (:func:`herding_order`) on precomputed ``(N, D)`` features;
    indices class-major, each class in pick order."""
    chosen = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        chosen.append(members[herding_order(features[members], ipc)])
    return torch.cat(chosen)


def trained_herding_coreset(
    train: data.ImageSplit,
    ipc: int,
    model: nn.Module,
    source: FeatureSource,
    *,
    l2_normalize: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Herding on the penultimate features of a trained ``model`` (eval mode, no augmentation).

    Features are raw by default (DeepCore); ``l2_normalize`` scales each to unit length first
    (iCaRL). Returns the indices and the ``features`` record for the set's settings.
    """
    check_ipc(train, ipc)
    features = embed(model.to(torch.device(device)), train.images)
    if l2_normalize:
        features = torch.nn.functional.normalize(features, dim=1)
    indices = herding_on_features(features, train.labels, train.num_classes, ipc)
    return indices, {**source.describe(), "l2_normalize": l2_normalize, "dim": features.shape[1]}


# ---------------------------------------------------------------------------- whole baseline

# Forgetting's training epochs by default: Toneva et al.'s 200 (DeepCore trains 40). A GPU
# setting; on a CPU, lower it and count on a --train-subset (docs/methods.md gives a budget).
FORGETTING_EPOCHS = 200
_OWN_FIELDS = {  # settings that apply to one method only (recorded only for it)
    "forgetting": ("forgetting_epochs", "forgetting_unlearned"),
    "herding": ("feature_epochs", "l2_normalize"),
}


@dataclass(frozen=True)
class BaselineConfig:
    """What a baseline coreset is built from.

    ``zca=None``: the dataset's default (CIFAR on), or the buffer's. ``buffer``: a ``ddpp
    buffer`` folder; the data are then prepared exactly as its experts saw them (ZCA or
    normalisation, image size, data seed), and herding takes its features from the last snapshot
    of the buffer's first expert. ``feature_arch``: the network of herding's features and of
    forgetting's counts (None: the buffer's architecture, else convnet). ``forgetting_epochs``
    (forgetting) and ``feature_epochs``/``l2_normalize`` (herding; ``feature_epochs`` only
    without a buffer) apply to their method alone.
    """

    method: str
    dataset: str
    ipc: int
    zca: bool | None = None
    train_subset: int | None = None
    image_size: int | None = None
    feature_arch: str | None = None
    seed: int = 0
    buffer: Path | None = None
    forgetting_epochs: int = FORGETTING_EPOCHS
    forgetting_unlearned: str = "toneva"  # forgetting.UNLEARNED
    feature_epochs: int = HERDING_FEATURE_EPOCHS
    l2_normalize: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DdppError(
                f"unknown baseline '{self.method}'; choose one of: {', '.join(METHODS)}."
            )
        data.info(self.dataset)  # unknown dataset -> DdppError
        if self.ipc < 1:
            raise DdppError(f"--ipc must be at least 1 (got {self.ipc}).")
        if self.train_subset is not None and self.train_subset < 1:
            raise DdppError(f"--train-subset must be at least 1 (got {self.train_subset}).")
        if self.feature_arch is not None:
            models.check_known(self.feature_arch)
        if self.forgetting_epochs < 1:
            raise DdppError(
                f"--forgetting-epochs must be at least 1 (got {self.forgetting_epochs})."
            )
        if self.feature_epochs < 1:
            raise DdppError(f"--feature-epochs must be at least 1 (got {self.feature_epochs}).")
        if self.forgetting_unlearned not in UNLEARNED:
            raise DdppError(
                f"--forgetting-unlearned must be one of: {', '.join(UNLEARNED)} "
                f"(got '{self.forgetting_unlearned}')."
            )

    def describe(self) -> dict[str, Any]:
        """The settings (JSON-ready) as recorded with the coreset and its evaluation: the
        common ones and the method's own (``feature_epochs`` only when herding trains here)."""
        settings = asdict(self)
        settings["buffer"] = None if self.buffer is None else str(Path(self.buffer).resolve())
        own = set(_OWN_FIELDS.get(self.method, ()))
        if self.buffer is not None:
            own.discard("feature_epochs")  # the expert's network is used, nothing is trained
        for fields in _OWN_FIELDS.values():
            for name in fields:
                if name not in own:
                    settings.pop(name, None)
        return settings


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
        on_event: Callable[[object], None] | None = None,
        kept_in: Path | None = None,
        keep: bool = True,
    ) -> torch.Tensor:
        """The coreset of evaluation run ``run`` (random: a new subset per run; the other
        methods: the same for every run). Computed once per distinct coreset; training a
        selection network reports its epochs to ``on_event`` (:class:`FeatureEpoch`,
        :class:`forgetting.ForgettingEpoch`). With ``kept_in`` (an evaluation's records folder)
        a trained selection is kept there (unless ``keep`` is false: a torchrun rank other than
        0, whose choice is replaced by rank 0's) and taken again by a rerun of the same
        selection (:meth:`selection_file`) instead of training its network again."""
        c = self.config
        key = run if c.method == "random" else 0
        if key not in self._cache:
            if c.method == "random":
                found = random_coreset(self.train, c.ipc, derive_seed(c.seed, "random", key))
            else:
                emit = on_event or (lambda event: None)
                found, record = self._kept_selection(device, emit, kept_in, keep)
                self._selection.update(record)
            self._cache[key] = found
        return self._cache[key]

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
        emit: Callable[[object], None],
        kept_in: Path | None,
        keep: bool,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """:meth:`_select`, or the selection kept in ``kept_in`` by an earlier run of the same
        selection (herding-random trains nothing and is not kept). A kept file that cannot be
        read or is not this selection's is computed again and replaced."""
        if kept_in is None or self.config.method == "herding-random":
            return self._select(device, emit)
        identity = json.loads(json.dumps(self.selection_identity()))  # hashes the pool once
        path = self.selection_file(kept_in, identity)
        if path.is_file():
            try:
                kept = store.read(path, store.SELECTION_FORMAT)
                if kept.metadata.get("identity") == identity:
                    emit(SelectionReused(path))
                    return kept.tensors["indices"], kept.metadata["selection"]
            except (DdppError, KeyError):
                pass
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
        self, device: torch.device | str, emit: Callable[[object], None]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        c, arch = self.config, self.feature_arch
        if c.method == "herding-random":
            found = herding_coreset(self.train, c.ipc, arch=arch, seed=c.seed, device=device)
            return found, {"features": {"kind": "random-init", "arch": arch, "seed": c.seed}}
        if c.method == "herding":
            if self.expert_file is not None:
                model, source = expert_feature_network(self.expert_file, arch, self.train)
            else:
                model, source = train_feature_network(
                    self.train, arch, epochs=c.feature_epochs, seed=c.seed, device=device,
                    on_epoch=lambda epoch, epochs, loss: emit(FeatureEpoch(epoch, epochs, loss)),
                )  # fmt: skip
            found, record = trained_herding_coreset(
                self.train, c.ipc, model, source, l2_normalize=c.l2_normalize, device=device
            )
            return found, {"features": record}
        config = ForgettingConfig(
            arch=arch, epochs=c.forgetting_epochs, seed=c.seed, unlearned=c.forgetting_unlearned
        )
        found, counts = forgetting_coreset(self.train, c.ipc, config, device=device, on_event=emit)
        return found, {"forgetting": forgetting_record(config, counts, found)}

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


def forgetting_record(
    config: ForgettingConfig, counts: torch.Tensor, indices: torch.Tensor
) -> dict[str, Any]:
    """The ``forgetting`` entry of a coreset's settings: the training settings, where the counts
    came from, and the counts of the pool and of the chosen examples."""
    return {
        **asdict(config),
        # Experts of `ddpp buffer` keep per-epoch snapshots, not each example's correctness at
        # each presentation, so the counts always come from a run of their own.
        "counts_source": "trained on the pool",
        "pool_size": int(counts.numel()),
        "never_learned": int((counts == config.epochs).sum()),
        "max_count": int(counts.max()),
        "selected_counts": counts[indices].tolist(),
    }


@dataclass(frozen=True)
class _BufferData:
    """How a buffer's experts saw the data, for a baseline prepared like them."""

    arch: str
    zca_file: Path | None
    normalization: Any  # preprocess.Normalization | None
    image_size: int | None
    seed: int
    expert_file: Path | None


def _buffer_data(config: BaselineConfig, zca_path: Path | None) -> _BufferData:
    """Read ``config.buffer``'s manifest; DdppError when it contradicts the config."""
    folder = Path(config.buffer)
    manifest = read_manifest(folder)  # DdppError when not a buffer
    name = data.info(config.dataset).name
    dataset = manifest.dataset
    if not isinstance(dataset, str) or data.info(dataset).name != name:
        raise DdppError(
            f"the buffer at {folder} was made for dataset '{dataset}', not '{name}'; pass a "
            f"{name} buffer or drop --buffer."
        )
    arch = manifest.arch
    if config.feature_arch is not None and config.feature_arch != arch:
        raise DdppError(
            f"the buffer at {folder} holds '{arch}' experts, not '{config.feature_arch}'."
        )
    is_zca = manifest.is_zca
    if zca_path is not None:
        raise DdppError("--zca PATH and --buffer both fix the whitening; drop --zca (the "
                        "buffer's own ZCA is used).")  # fmt: skip
    if config.zca is not None and config.zca != is_zca:
        raise DdppError(
            f"the buffer at {folder} is {'ZCA-whitened' if is_zca else 'normalised'}; drop "
            f"{'--no-zca' if is_zca else '--zca'} or pass another buffer."
        )
    image_size = manifest.image_size
    if config.image_size is not None and config.image_size != image_size:
        raise DdppError(
            f"the buffer at {folder} was made at --image-size {image_size}, not "
            f"{config.image_size}; drop --image-size."
        )
    zca_file = folder / ZCA_NAME if is_zca else None
    if zca_file is not None and not zca_file.is_file():
        raise DdppError(f"the buffer at {folder} is ZCA-whitened but its {ZCA_NAME} "
                        "is missing; remake the buffer.")  # fmt: skip
    experts = expert_files(folder)
    if config.method == "herding" and not experts:
        raise DdppError(f"the buffer at {folder} holds no expert yet; finish it with 'ddpp "
                        "buffer', or drop --buffer to train a feature network.")  # fmt: skip
    return _BufferData(
        arch=arch,
        zca_file=zca_file,
        normalization=None if is_zca else manifest.normalization,
        image_size=image_size,
        seed=manifest.seed,
        expert_file=experts[min(experts)] if experts else None,
    )


def prepare_pool(
    dataset: str,
    *,
    use_zca: bool,
    zca_path: Path | None = None,
    zca_out: Path | None = None,
    data_root: Path | None = None,
    download: bool = True,
    train_subset: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    normalization: Any = None,
) -> tuple[PreparedData, dict[str, Any], Path | None]:
    """``dataset`` prepared for a set of real (or imported) images: (the data, the
    ``preprocessing`` record a set of it carries, the ZCA file or None).

    With ``use_zca`` the data are whitened with ``zca_path`` (DdppError when it was fitted on
    another dataset), else with a ZCA fitted on the train split and saved to ``zca_out``;
    without, normalised (``normalization``, e.g. a buffer's recorded one, else the dataset's).
    """
    name = data.info(dataset).name
    whitening = None
    if zca_path is not None:
        fitted_on = store.read_metadata(Path(zca_path)).get("dataset")
        whitening = zca.load(Path(zca_path))
        if isinstance(fitted_on, str) and data.info(fitted_on).name != name:
            raise DdppError(
                f"the ZCA at {zca_path} was fitted on {fitted_on}, not {name}; pass the "
                f"ZCA of a {name} buffer."
            )
    prepared = prepare(
        name, data_root, use_zca=use_zca, download=download, train_subset=train_subset,
        image_size=image_size, seed=seed, whitening=whitening, normalization=normalization,
    )  # fmt: skip
    if not use_zca:
        return prepared, prepared.preprocessing.describe(), None
    if zca_path is None:
        if zca_out is None:
            raise ValueError("zca_out is needed to save a freshly fitted ZCA")
        zca_path = zca.save(prepared.preprocessing.whitening, zca_out, {"dataset": name})
    return prepared, zca_reference(Path(zca_path)), Path(zca_path)


def prepare_baseline(
    config: BaselineConfig,
    *,
    data_root: Path | None = None,
    download: bool = True,
    zca_path: Path | None = None,
    zca_out: Path | None = None,
    test_subset: int | None = None,
    eval_seed: int = 0,
) -> Baseline:
    """Load and transform the data for a baseline.

    With ``config.buffer`` the data are prepared as the buffer's experts saw them (its ZCA file,
    or its recorded normalisation; its image size and data seed). Otherwise ZCA (``config.zca``,
    default on for CIFAR) reuses ``zca_path`` (e.g. a buffer's ``zca.safetensors``, so the
    coreset is comparable with sets distilled from that buffer), or is fitted on the train split
    and saved to ``zca_out`` so that a saved coreset can refer to it.
    """
    info = data.info(config.dataset)
    buffer = _buffer_data(config, zca_path) if config.buffer is not None else None
    if zca_path is not None and config.zca is False:
        raise DdppError("--zca PATH and --no-zca contradict each other; drop one.")
    if buffer is not None:
        zca_path, use_zca = buffer.zca_file, buffer.zca_file is not None
        image_size, data_seed = buffer.image_size, buffer.seed
    else:
        use_zca = info.default_zca if config.zca is None else config.zca
        use_zca = use_zca or zca_path is not None
        image_size, data_seed = config.image_size, config.seed
    pool = prepare_pool(
        info.name, use_zca=use_zca, zca_path=zca_path, zca_out=zca_out, data_root=data_root,
        download=download, train_subset=config.train_subset, image_size=image_size,
        seed=data_seed, normalization=None if buffer is None else buffer.normalization,
    )  # fmt: skip
    prepared, described, zca_path = pool
    check_ipc(prepared.train, config.ipc)
    test = take_test_subset(prepared.test, test_subset, eval_seed)
    return Baseline(
        config=config,
        train=prepared.train,
        test_images=test.images,
        test_labels=test.labels,
        preprocessing=prepared.preprocessing,
        preprocessing_info=described,
        zca_path=zca_path,
        data_seed=data_seed,
        image_size=image_size,
        expert_file=None if buffer is None else buffer.expert_file,
        feature_arch=config.feature_arch or (buffer.arch if buffer is not None else "convnet"),
    )


def evaluate_baseline(
    baseline: Baseline,
    config: EvalConfig,
    *,
    device: torch.device | str = "cpu",
    on_event: Callable[[object], None] | None = None,
    parallel: int = 1,
    world: World | None = None,
    records: Path | None = None,
) -> tuple[EvalResult, DistilledSet]:
    """Evaluate the baseline under ``config``; also returns run 0's coreset as a set.

    Herding and forgetting first train their selection network (progress to ``on_event``).
    ``parallel`` runs train at once as one batched model; under torchrun (``world``) the runs
    are split between the ranks, which all use rank 0's coreset; ``records`` keeps finished runs
    for a rerun to continue (see :func:`evaluate.evaluate_per_run`)."""
    c = baseline.config
    if c.method in FIXED_METHODS:
        main = world is None or world.is_main
        chosen = baseline.indices(0, device, on_event, kept_in=records, keep=main)
        if world is not None:  # training on GPUs is not bit-reproducible: one coreset for all
            baseline._cache[0] = world.from_main(chosen)

    def set_for_run(run: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = baseline.indices(run, device)
        return baseline.train.images[index], baseline.train.labels[index]

    result = evaluate_per_run(
        set_for_run, baseline.test_images, baseline.test_labels,
        num_classes=baseline.train.num_classes, config=config, lr=None, device=device,
        on_event=on_event, parallel=parallel, world=world, records=records,
    )  # fmt: skip
    result = replace(
        result,
        protocol={
            **result.protocol,
            "dataset": data.info(c.dataset).name,
            "source": c.method,
            "ipc": c.ipc,
            "preprocessing": baseline.preprocessing.kind,
            "baseline": {
                **c.describe(),
                "image_size": baseline.image_size,
                "pool_size": len(baseline.train),
                "subset_per_run": c.method == "random",
                "zca_file": None if baseline.zca_path is None else str(baseline.zca_path),
                **baseline.selection(),
            },
        },
    )
    return result, baseline.make_set(baseline.indices(0, device), run=0)
