"""Coreset baselines evaluated under the same protocol as distilled sets (SPEC §7, Table I).

- random: ``ipc`` real training images per class, drawn uniformly; run ``r`` of an evaluation
  draws its own subset (seed derived from the run), so the std covers the choice of subset too.
- herding: per class, greedy mean matching (Welling 2009, as used by iCaRL and the DC benchmark)
  in the feature space (penultimate-layer embedding) of a randomly initialised ConvNet; the
  selection is deterministic given the seed, and the runs differ in the evaluated network only.

A coreset is returned as indices into the training split, and can be packed as a
:class:`DistilledSet` (``source="random"|"herding"``, ``lr=None``) with the dataset's
preprocessing so that ``evaluate``, ``crossarch`` and ``visualize`` treat it like a distilled set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpp_cli.engine import data, models, store, zca
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.device import derive_seed, make_generator, seeded
from ddpp_cli.engine.distilled import DistilledSet, file_sha256, zca_reference
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig, EvalResult, evaluate_per_run, take_test_subset
from ddpp_cli.engine.functional import ParamLayout, load_flat
from ddpp_cli.engine.preprocess import Preprocessing, prepare
from ddpp_cli.engine.training import train_epoch
from ddpp_cli.engine.trajectory import load_trajectory

METHODS = ("random", "herding")
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


# ---------------------------------------------------------------------------- whole baseline


@dataclass(frozen=True)
class BaselineConfig:
    """What a baseline coreset is built from; ``zca=None``: the dataset's default (CIFAR on)."""

    method: str
    dataset: str
    ipc: int
    zca: bool | None = None
    train_subset: int | None = None
    image_size: int | None = None
    feature_arch: str = "convnet"
    seed: int = 0

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
        models.check_known(self.feature_arch)


@dataclass(frozen=True, eq=False)
class Baseline:
    """A prepared baseline: the (transformed) training pool and test split, and how to view them."""

    config: BaselineConfig
    train: data.ImageSplit
    test_images: torch.Tensor
    test_labels: torch.Tensor
    preprocessing: Preprocessing
    preprocessing_info: dict[str, Any]
    zca_path: Path | None
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def indices(self, run: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
        """The coreset of evaluation run ``run`` (random: a new subset per run; herding: the
        same for every run). Computed once per distinct coreset."""
        c = self.config
        key = run if c.method == "random" else 0
        if key not in self._cache:
            if c.method == "random":
                found = random_coreset(self.train, c.ipc, derive_seed(c.seed, "random", key))
            else:
                found = herding_coreset(
                    self.train, c.ipc, arch=c.feature_arch, seed=c.seed, device=device
                )
            self._cache[key] = found
        return self._cache[key]

    def make_set(self, indices: torch.Tensor, run: int = 0) -> DistilledSet:
        # data_seed: the seed of the 80/20 split of single-folder datasets this pool came from.
        settings = {**asdict(self.config), "run": run, "data_seed": self.config.seed}
        return coreset_set(
            self.train, indices, dataset=data.info(self.config.dataset).name,
            preprocessing=self.preprocessing_info, source=self.config.method,
            seed=self.config.seed, settings=settings,
        )  # fmt: skip


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

    ZCA (``config.zca``, default on for CIFAR) reuses ``zca_path`` (e.g. a buffer's
    ``zca.safetensors``, so the coreset is comparable with sets distilled from that buffer), or
    is fitted on the train split and saved to ``zca_out`` so that a saved coreset can refer to it.
    """
    info = data.info(config.dataset)
    if zca_path is not None and config.zca is False:
        raise DdppError("--zca PATH and --no-zca contradict each other; drop one.")
    use_zca = info.default_zca if config.zca is None else config.zca
    use_zca = use_zca or zca_path is not None
    whitening = None
    if zca_path is not None:
        fitted_on = store.read_metadata(Path(zca_path)).get("dataset")
        whitening = zca.load(Path(zca_path))
        if isinstance(fitted_on, str) and data.info(fitted_on).name != info.name:
            raise DdppError(
                f"the ZCA at {zca_path} was fitted on {fitted_on}, not {info.name}; pass the "
                f"ZCA of a {info.name} buffer."
            )
    prepared = prepare(
        info.name, data_root, use_zca=use_zca, download=download,
        train_subset=config.train_subset, image_size=config.image_size, seed=config.seed,
        whitening=whitening,
    )  # fmt: skip
    check_ipc(prepared.train, config.ipc)
    if use_zca:
        if zca_path is None:
            if zca_out is None:
                raise ValueError("zca_out is needed to save a freshly fitted ZCA")
            zca_path = zca.save(prepared.preprocessing.whitening, zca_out, {"dataset": info.name})
        described = zca_reference(Path(zca_path))
    else:
        described = prepared.preprocessing.describe()
    test = take_test_subset(prepared.test, test_subset, eval_seed)
    return Baseline(
        config=config,
        train=prepared.train,
        test_images=test.images,
        test_labels=test.labels,
        preprocessing=prepared.preprocessing,
        preprocessing_info=described,
        zca_path=Path(zca_path) if use_zca else None,
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

    ``parallel`` runs train at once as one batched model; under torchrun (``world``) the runs
    are split between the ranks; ``records`` keeps finished runs for a rerun to continue (see
    :func:`evaluate.evaluate_per_run`)."""

    def set_for_run(run: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = baseline.indices(run, device)
        return baseline.train.images[index], baseline.train.labels[index]

    result = evaluate_per_run(
        set_for_run, baseline.test_images, baseline.test_labels,
        num_classes=baseline.train.num_classes, config=config, lr=None, device=device,
        on_event=on_event, parallel=parallel, world=world, records=records,
    )  # fmt: skip
    c = baseline.config
    result = replace(
        result,
        protocol={
            **result.protocol,
            "dataset": data.info(c.dataset).name,
            "source": c.method,
            "ipc": c.ipc,
            "preprocessing": baseline.preprocessing.kind,
            "baseline": {
                **asdict(c),
                "pool_size": len(baseline.train),
                "subset_per_run": c.method == "random",
                "zca_file": None if baseline.zca_path is None else str(baseline.zca_path),
            },
        },
    )
    return result, baseline.make_set(baseline.indices(0, device), run=0)


# ------------------------------------------------------------------ herding on trained features
#
# The DC benchmark's herding row uses the features of a network trained on the whole training
# set (DeepCore's herding.py; METHODS.md §5). The random-feature herding above stays as it is.

HERDING_FEATURE_EPOCHS = 10  # [ddpp] CPU budget when no expert is given (an expert has 50)


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
