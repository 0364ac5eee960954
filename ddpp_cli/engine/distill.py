"""Distillation (``ddpp distill``): MTT trajectory matching with DDPP parameter pruning (SPEC §6).

State: synthetic images X (K·IPC, C, H, W), class-major hard labels, and a learnable step size α.
Each iteration picks an expert (shuffled, cycling) and a start epoch i, unrolls a student from
θ_i for N steps on augmented minibatches of X (keeping the graph), prunes the parameters whose
end value and the target θ_{i+M} are difficult to match, and backpropagates the normalised
matching loss over the kept parameters into X and α (SGD, momentum 0.5 on both).

A run folder holds ``distilled.safetensors`` (the current set), ``checkpoint.safetensors``
(everything needed to continue bit for bit), ``metrics.jsonl`` (one line per iteration),
``best.safetensors`` (the set with the best validation accuracy) and ``summary.json`` (the final
result). All randomness comes from three CPU generators derived from the seed (expert order,
start epochs, minibatches and DSA draws), whose states are checkpointed; evaluation runs are
seeded on their own. The engine never prints: progress goes to ``on_event``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs
import torch
from safetensors import safe_open

from ddpp_cli import __version__
from ddpp_cli.engine import augment, autolr, data, models, presets, store, zca
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.device import derive_seed, make_generator, seeded
from ddpp_cli.engine.distilled import DistilledSet, zca_reference
from ddpp_cli.engine.distilled import load as load_set
from ddpp_cli.engine.distilled import save as save_set
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig, EvalResult, evaluate_images
from ddpp_cli.engine.events import Notice
from ddpp_cli.engine.functional import ParamLayout
from ddpp_cli.engine.preprocess import PreparedData, prepare
from ddpp_cli.engine.trajectory import (
    MANIFEST_NAME,
    ZCA_NAME,
    default_buffer_dir,
    expert_files,
    read_manifest,
)
from ddpp_cli.engine.unroll import AMP_MODES, UNROLL_MODES, Student, match, plan_unroll
from ddpp_cli.engine.unroll import UnrollStep as UnrollStep  # re-exported
from ddpp_cli.engine.unroll import unroll as unroll  # re-exported

DISTILLED_NAME = "distilled.safetensors"
CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
BEST_NAME = "best.safetensors"
SNAPSHOTS_DIRNAME = "snapshots"  # iter_NNNNNN.safetensors with --snapshot-every (for --animate)
SUMMARY_NAME = "summary.json"
INITS = ("real", "noise")
MAX_VAL_SIZE = 5000
_GENERATORS = ("experts", "start", "unroll")
# Settings a resumed run may change: the length of the run, and when and how much it validates,
# tests and checkpoints (evaluation draws from its own seeds, never from the run's generators).
CHANGEABLE_ON_RESUME = (
    "iterations",
    "eval_every",
    "eval_runs",
    "eval_epochs",
    "test_runs",
    "checkpoint_every",
    "snapshot_every",
    # How the same maths is executed: exact in both unroll modes (equal up to rounding), so an
    # out-of-memory run may continue with --unroll memory (bit for bit only if unchanged).
    "unroll",
    "compile",
    "channels_last",
)

EventCallback = Callable[[object], None]


class DivergedError(DdppError):
    """The run diverged (non-finite loss, lr or images, or lr ≤ 0); the last good state is saved.

    The CLI maps it to exit status 1 (not 2: the input was valid, the optimisation failed).
    """

    def __init__(self, message: str, *, iteration: int, distilled: Path, metrics: Path) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.distilled = distilled
        self.metrics = metrics


# ---------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DistillConfig:
    """Everything that determines a distillation run (SPEC §6); see :meth:`from_preset`.

    ``zca`` and ``train_subset`` None mean "as the buffer was made"; ``val_size`` None means
    10 % of the training split (at most 5000); ``batch_syn`` None means all images every step;
    ``eval_every`` 0 turns validation off; ``test_runs`` 0 skips the final test.

    Execution (docs/performance.md): ``unroll`` "graph" keeps the unrolled graph (memory grows
    with ``syn_steps``), "memory" recomputes one step at a time in reverse (constant memory,
    same gradients); ``amp`` "bf16" autocasts the student's forward (GPU; loss, mask and updates
    stay float32); ``compile`` wraps the per-step gradient in ``torch.compile``;
    ``channels_last`` uses channels-last activations (helps on GPUs, not on the CPU).
    """

    dataset: str
    ipc: int
    syn_steps: int
    expert_epochs: int
    max_start_epoch: int
    lr_img: float
    lr_lr: float | None  # None: derived at the start of the run (engine/autolr.py, issue 14)
    lr_teacher: float | None  # None: derived likewise
    batch_syn: int | None = None
    zca: bool | None = None
    arch: str = "convnet"
    eps: float = 0.1
    iterations: int = 5000
    init: str = "real"
    dsa_strategy: str = augment.DEFAULT_STRATEGY
    eval_every: int = 500
    eval_runs: int = 3
    eval_epochs: int = 1000
    test_runs: int = 5
    checkpoint_every: int = 100
    snapshot_every: int = 0
    val_size: int | None = None
    train_subset: int | None = None
    seed: int = 0
    unroll: str = "graph"
    amp: str = "off"
    compile: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", data.info(self.dataset).name)
        models.check_known(self.arch)
        if self.ipc < 1:
            raise DdppError(f"--ipc must be at least 1 (got {self.ipc}).")
        if not 0.0 <= self.eps < 1.0:
            raise DdppError(
                f"--eps must be in [0, 1) (got {self.eps}); 0 turns pruning off, 0.1 is the "
                "paper's value."
            )
        for name in ("iterations", "syn_steps", "expert_epochs", "max_start_epoch"):
            _at_least(name, getattr(self, name), 1)
        for name in ("eval_runs", "eval_epochs", "checkpoint_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("eval_every", "test_runs", "snapshot_every"):
            _at_least(name, getattr(self, name), 0)
        for name in ("batch_syn", "train_subset"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if self.val_size is not None:
            _at_least("val_size", self.val_size, 0)
            if self.val_size == 0 and self.eval_every > 0:
                raise DdppError("--val-size 0 leaves nothing to validate on; use --eval-every 0.")
        for name in ("lr_img", "lr_teacher"):
            value = getattr(self, name)
            if name == "lr_teacher" and value is None:  # issue 14: derived
                continue
            if not (math.isfinite(value) and value > 0):
                raise DdppError(f"{_flag(name)} must be a positive number (got {value}).")
        if self.lr_lr is not None and not (math.isfinite(self.lr_lr) and self.lr_lr >= 0):
            raise DdppError(f"--lr-lr must be zero (a fixed lr) or positive (got {self.lr_lr}).")
        if self.init not in INITS:
            raise DdppError(f"--init must be one of: {', '.join(INITS)} (got '{self.init}').")
        DSA(self.dsa_strategy)  # unknown op -> DdppError
        if self.unroll not in UNROLL_MODES:
            raise DdppError(
                f"--unroll must be one of: {', '.join(UNROLL_MODES)} (got '{self.unroll}')."
            )
        if self.amp not in AMP_MODES:
            raise DdppError(f"--amp must be one of: {', '.join(AMP_MODES)} (got '{self.amp}').")

    @classmethod
    def from_preset(
        cls, dataset: str, ipc: int, *, derive: bool = False, **values: Any
    ) -> DistillConfig:
        """A config with SPEC §6's preset for ``dataset``/``ipc`` where ``values`` has None.

        ``derive`` (``--auto-lr``) leaves lr_teacher and lr_lr open (None) on a paper row too,
        as they are for every other dataset: the run derives them (engine/autolr.py).

        The preset's ZCA choice only picks the default buffer; the buffer's own preprocessing
        decides (``zca`` stays None unless given).
        """
        preset = presets.resolve(dataset, ipc, derive=derive)
        del preset["zca"]
        given = {k: v for k, v in values.items() if v is not None}
        return cls(dataset=dataset, ipc=ipc, **{**preset, **given})

    @property
    def needed_epochs(self) -> int:
        """Epochs an expert must have: T⁺ − 1 + M."""
        return self.max_start_epoch - 1 + self.expert_epochs

    def preset_zca(self) -> bool:
        """ZCA as given, else as SPEC §6's preset says (which default buffer to use)."""
        if self.zca is not None:
            return self.zca
        return bool(presets.resolve(self.dataset, self.ipc)["zca"])

    def buffer_command(self, out: Path | None = None) -> str:
        """The ``ddpp buffer`` command that makes the buffer this config needs."""
        parts = ["ddpp buffer", f"--dataset {self.dataset}", f"--arch {self.arch}"]
        use_zca = self.preset_zca()
        if use_zca != data.info(self.dataset).default_zca:
            parts.append("--zca" if use_zca else "--no-zca")
        if self.train_subset is not None:
            parts.append(f"--train-subset {self.train_subset}")
        epochs = max(self.needed_epochs, 50)
        if epochs != 50:
            parts.append(f"--epochs {epochs}")
        if out is not None:
            parts.append(f"--out {out}")
        return " ".join(parts)

    def check_buffer(self, folder: Path, manifest: dict[str, Any]) -> None:
        """DdppError when the buffer does not fit: dataset, architecture, preprocessing, epochs."""
        dataset = manifest.get("dataset")
        if not isinstance(dataset, str) or data.info(dataset).name != self.dataset:
            raise DdppError(
                f"the buffer at {folder} was made for dataset '{dataset}', not "
                f"'{self.dataset}'; pass a {self.dataset} buffer with --buffer or make one with "
                f"'{self.buffer_command()}'."
            )
        if manifest.get("arch") != self.arch:
            raise DdppError(
                f"the buffer at {folder} was made with architecture '{manifest.get('arch')}', "
                f"not '{self.arch}'; pass --arch {manifest.get('arch')} or make a buffer with "
                f"'{self.buffer_command()}'."
            )
        kind = (manifest.get("preprocessing") or {}).get("kind")
        if self.zca is not None and (kind == "zca") != self.zca:
            raise DdppError(
                f"the buffer at {folder} is {'ZCA-whitened' if kind == 'zca' else 'normalised'}"
                f" but {'--zca' if self.zca else '--no-zca'} was given; drop the option or pass "
                "a matching buffer."
            )
        epochs = int(manifest.get("epochs", 0))
        if self.needed_epochs > epochs:
            raise DdppError(
                f"--max-start-epoch {self.max_start_epoch} with --expert-epochs "
                f"{self.expert_epochs} needs experts of at least {self.needed_epochs} epochs "
                f"(max_start_epoch − 1 + expert_epochs), but the buffer at {folder} has "
                f"{epochs}; lower them or train longer experts."
            )

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint: all but
        :data:`CHANGEABLE_ON_RESUME`, which do not touch the images' trajectory."""
        settings = asdict(self)
        for name in CHANGEABLE_ON_RESUME:
            del settings[name]
        return settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DdppError(f"{_flag(name)} must be an integer ≥ {minimum} (got {value}).")


def default_run_dir(config: DistillConfig, now: datetime | None = None) -> Path:
    """``<user data dir>/ddpp/runs/<dataset>-ipc<K>-eps<E>-<timestamp>``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = f"{config.dataset}-ipc{config.ipc}-eps{config.eps:g}-{stamp}"
    return platformdirs.user_data_path("ddpp") / "runs" / name


def find_buffer(config: DistillConfig, buffer: Path | None = None) -> Path:
    """The buffer folder to use (``buffer``, else the default one); DdppError if missing."""
    folder = Path(buffer) if buffer is not None else None
    if folder is None:
        folder = default_buffer_dir(config.dataset, config.arch, config.preset_zca())
        if not (folder / MANIFEST_NAME).is_file():
            raise DdppError(
                f"no buffer of expert trajectories at {folder}; make it with "
                f"'{config.buffer_command()}' or pass --buffer."
            )
    elif not (folder / MANIFEST_NAME).is_file():
        raise DdppError(
            f"no buffer at {folder} (no {MANIFEST_NAME}); make it with "
            f"'{config.buffer_command(folder)}' or pass the right --buffer."
        )
    return folder


def saved_config(folder: Path) -> DistillConfig:
    """The config stored in the checkpoint of run folder ``folder`` (for ``--resume``)."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        raise DdppError(f"{folder} holds no {CHECKPOINT_NAME}; it is not a run to resume.")
    stored = store.read_metadata(path).get("config")
    known = {f.name for f in fields(DistillConfig)}
    if not isinstance(stored, dict) or not set(stored) <= known:
        raise DdppError(f"{path} holds no readable config; it was not written by this ddpp.")
    return DistillConfig(**stored)


# ---------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class DistillStarted:
    folder: Path
    config: DistillConfig  # resolved against the buffer
    buffer: Path
    experts: int
    buffer_epochs: int
    num_params: int
    train_size: int
    val_size: int
    test_size: int
    preprocessing: str
    start_iteration: int
    resumed: bool
    device: str
    derived: dict[str, str] = field(default_factory=dict)  # setting -> "derived: …" (issue 14)


@dataclass(frozen=True)
class IterationFinished:
    iteration: int  # 1-based: the number of updates done
    iterations: int
    loss: float
    pruned_fraction: float
    lr: float  # α after this iteration's update
    start_epoch: int
    expert: int
    seconds: float


@dataclass(frozen=True)
class ValidationStarted:
    iteration: int
    runs: int
    epochs: int


@dataclass(frozen=True)
class ValidationFinished:
    iteration: int
    accuracy: float
    std: float
    best_iteration: int
    best_accuracy: float


@dataclass(frozen=True)
class CheckpointSaved:
    iteration: int
    path: Path


@dataclass(frozen=True)
class TestStarted:
    path: Path
    runs: int
    epochs: int


@dataclass(frozen=True)
class TestFinished:
    path: Path
    result: EvalResult


@dataclass(frozen=True)
class DistillSummary:
    folder: Path
    distilled: Path
    best: Path | None
    checkpoint: Path
    metrics: Path
    summary: Path
    iterations: int
    final_lr: float
    best_iteration: int | None
    best_val_accuracy: float | None
    tested: Path | None
    test: EvalResult | None
    pruned_fraction: dict[str, float] = field(default_factory=dict)  # min, max, mean
    seconds: float = 0.0


def _check_expert(path: Path, shape: tuple[int, int]) -> None:
    """DdppError unless ``path`` is a trajectory file whose ``params`` has ``shape``."""
    if store.read_metadata(path).get("format") != store.TRAJECTORY_FORMAT:
        raise DdppError(f"{path} is not a {store.TRAJECTORY_FORMAT} file; remove it.")
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        found = tuple(handle.get_slice("params").get_shape()) if "params" in names else ()
    if found != shape:
        raise DdppError(
            f"{path} holds a trajectory of shape {found}, but the buffer's manifest and "
            f"architecture need {shape}; remove the file and rerun 'ddpp buffer'."
        )


def read_snapshots(path: Path, rows: tuple[int, ...]) -> list[torch.Tensor]:
    """Rows ``rows`` of an expert file's ``params`` [E+1, P], without loading the whole file."""
    with safe_open(str(path), framework="pt") as handle:
        params = handle.get_slice("params")
        return [params[row].float() for row in rows]


# ------------------------------------------------------------------------- the run


@dataclass
class _Snapshot:
    """A consistent copy of the run's state at the end of an iteration (what a checkpoint is)."""

    iteration: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _split_validation(
    labels: torch.Tensor, num_classes: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, validation) indices, validation of ``size`` images, both sorted."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    quota = data._allocate(counts, size) if size > 0 else [0] * num_classes
    train, val = [], []
    for order, take in zip(
        data.shuffled_per_class(labels, num_classes, generator), quota, strict=True
    ):
        val.append(order[:take])
        train.append(order[take:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


class _Run:
    """One distillation run: data, buffer, model, state, and the files of its folder."""

    def __init__(
        self,
        config: DistillConfig,
        folder: Path,
        buffer: Path,
        *,
        data_root: Path | None,
        download: bool,
        device: torch.device,
        emit: EventCallback,
    ) -> None:
        self.folder = folder
        self.buffer = buffer
        self.device = device
        self.emit = emit
        self.paths = {
            "distilled": folder / DISTILLED_NAME,
            "checkpoint": folder / CHECKPOINT_NAME,
            "metrics": folder / METRICS_NAME,
            "best": folder / BEST_NAME,
            "summary": folder / SUMMARY_NAME,
        }
        manifest = read_manifest(buffer)
        config.check_buffer(buffer, manifest)
        self.manifest = manifest
        buffer_config = manifest.get("config") or {}
        self.buffer_config = buffer_config
        is_zca = (manifest.get("preprocessing") or {}).get("kind") == "zca"
        if config.train_subset is None and buffer_config.get("train_subset") is not None:
            config = replace(config, train_subset=int(buffer_config["train_subset"]))
        config = replace(config, zca=is_zca)
        files = expert_files(buffer)
        if not files:
            raise DdppError(
                f"the buffer at {buffer} holds no expert files yet; finish it with "
                f"'{config.buffer_command(buffer)}'."
            )
        self.expert_paths = files

        self.image_size_option = buffer_config.get("image_size")
        self.data_seed = int(buffer_config.get("seed") or 0)
        zca_path = buffer / ZCA_NAME
        whitening = None
        if is_zca:
            if not zca_path.is_file():
                raise DdppError(
                    f"the buffer at {buffer} is ZCA-whitened but its {ZCA_NAME} is missing; "
                    "remake the buffer."
                )
            whitening = zca.load(zca_path)
        prepared = prepare(
            config.dataset, data_root, use_zca=is_zca, download=download,
            train_subset=config.train_subset, image_size=self.image_size_option,
            seed=self.data_seed, whitening=whitening,
        )  # fmt: skip
        self._check_data(prepared, manifest)
        self.prepared = prepared
        self.preprocessing = (
            zca_reference(zca_path) if is_zca else prepared.preprocessing.describe()
        )

        num_classes = prepared.num_classes
        train_size = len(prepared.train.labels)
        if config.val_size is None:
            wanted = 0 if config.eval_every == 0 else min(MAX_VAL_SIZE, round(0.1 * train_size))
            config = replace(config, val_size=max(wanted, num_classes if wanted else 0))
        train_idx, val_idx = _split_validation(
            prepared.train.labels, num_classes, config.val_size,
            make_generator(config.seed, "val_split"),
        )  # fmt: skip
        self.train_idx, self.val_idx = train_idx, val_idx
        self.val_images = prepared.train.images[val_idx]
        self.val_labels = prepared.train.labels[val_idx]
        self._check_ipc(config, prepared.train.labels[train_idx], prepared.train.class_names)
        self.config = config

        with seeded(0):
            model = models.create(config.arch, prepared.channels, num_classes, prepared.image_size)
        self.layout = ParamLayout.of(model)
        self.layout.check_compatible(
            ParamLayout.from_json(manifest.get("layout")), f"the buffer at {buffer}"
        )
        self.model = model.to(device).train()
        self.dsa = DSA(config.dsa_strategy)
        self.student = Student(
            self.model, self.layout, self.dsa, amp=config.amp, compile=config.compile,
            channels_last=config.channels_last, on_notice=lambda text: emit(Notice(text)),
        )  # fmt: skip
        self.buffer_epochs = int(manifest["epochs"])
        for path in self.expert_paths.values():
            _check_expert(path, (self.buffer_epochs + 1, self.layout.numel))
        self.labels = torch.arange(num_classes).repeat_interleave(config.ipc).to(device)
        self.state: dict[str, Any] = {}

    # -- checks ---------------------------------------------------------------------------

    def _check_data(self, prepared: PreparedData, manifest: dict[str, Any]) -> None:
        described = manifest.get("data") or {}
        found = {
            "channels": prepared.channels,
            "image_size": list(prepared.image_size),
            "num_classes": prepared.num_classes,
        }
        for key, value in found.items():
            if key in described and described[key] != value:
                raise DdppError(
                    f"the buffer at {self.buffer} was made on data with {key} "
                    f"{described[key]}, but the data found now has {value}; pass the --data-dir "
                    "the buffer was made from."
                )

    @staticmethod
    def _check_ipc(
        config: DistillConfig, labels: torch.Tensor, class_names: tuple[str, ...]
    ) -> None:
        counts = torch.bincount(labels, minlength=len(class_names))
        smallest = int(counts.min())
        if config.ipc > smallest:
            label = int(counts.argmin())
            held = f" after holding out {config.val_size} for validation" if config.val_size else ""
            raise DdppError(
                f"--ipc {config.ipc} is more than class '{class_names[label]}' has ({smallest} "
                f"training images{held}); use --ipc {smallest} or less."
            )

    # -- state ----------------------------------------------------------------------------

    def fresh_state(self) -> None:
        """Iteration 0: images from real data (or noise), α = lr_teacher, new generators."""
        c = self.config
        train = self.prepared.train
        generator = make_generator(c.seed, "init")
        if c.init == "real":
            pool_labels = train.labels[self.train_idx]
            shuffled = data.shuffled_per_class(pool_labels, self.prepared.num_classes, generator)
            chosen = torch.cat([self.train_idx[members[: c.ipc]] for members in shuffled])
            images = train.images[chosen].clone()
        else:
            shape = (len(self.labels), *train.images.shape[1:])
            images = torch.randn(shape, generator=generator)
        generators = {name: make_generator(c.seed, name) for name in _GENERATORS}
        experts = sorted(self.expert_paths)
        order = torch.tensor(experts)[torch.randperm(len(experts), generator=generators["experts"])]
        self._set_state(
            iteration=0,
            images=images,
            lr=torch.tensor(c.lr_teacher, dtype=torch.float32),
            momentum={},
            generators=generators,
            experts=experts,
            order=order,
            position=0,
            best=(None, None),
            elapsed=0.0,
        )

    def _set_state(
        self,
        *,
        iteration: int,
        images: torch.Tensor,
        lr: torch.Tensor,
        momentum: dict[str, torch.Tensor],
        generators: dict[str, torch.Generator],
        experts: list[int],
        order: torch.Tensor,
        position: int,
        best: tuple[int | None, float | None],
        elapsed: float,
    ) -> None:
        c = self.config
        x = images.to(self.device, torch.float32).detach().clone().requires_grad_(True)
        alpha = lr.to(self.device, torch.float32).reshape(()).detach().clone().requires_grad_(True)
        opt_images = torch.optim.SGD([x], lr=c.lr_img, momentum=0.5)
        opt_lr = torch.optim.SGD([alpha], lr=c.lr_lr, momentum=0.5)
        if "images" in momentum:
            opt_images.state[x]["momentum_buffer"] = momentum["images"].to(self.device).clone()
        if "lr" in momentum:
            opt_lr.state[alpha]["momentum_buffer"] = (
                momentum["lr"].to(self.device).reshape(()).clone()
            )
        self.state = {
            "iteration": iteration,
            "images": x,
            "lr": alpha,
            "opt_images": opt_images,
            "opt_lr": opt_lr,
            "generators": generators,
            "experts": experts,
            "order": order,
            "position": position,
            "best": best,
            "elapsed": elapsed,
        }

    def snapshot(self) -> _Snapshot:
        """A consistent copy of the current state (cheap: images, α and momentum, on device)."""
        s = self.state
        tensors = {
            "images": s["images"].detach().clone(),
            "labels": self.labels.detach().clone(),
            "lr": s["lr"].detach().reshape(1).clone(),
            "expert_order": s["order"].clone(),
        }
        for name, opt, param in (
            ("images", s["opt_images"], s["images"]),
            ("lr", s["opt_lr"], s["lr"]),
        ):
            buffer = opt.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                buffer = buffer.detach().clone()
                tensors[f"momentum_{name}"] = buffer.reshape(1) if name == "lr" else buffer
        for name, generator in s["generators"].items():
            tensors[f"rng_{name}"] = generator.get_state()
        best_iteration, best_accuracy = s["best"]
        meta = {
            "config": asdict(self.config),
            "iteration": s["iteration"],
            "expert_position": s["position"],
            "experts": s["experts"],
            "best_iteration": best_iteration,
            "best_val_accuracy": best_accuracy,
            "elapsed_seconds": s["elapsed"],
            "buffer": str(self.buffer.resolve()),
            "buffer_config": self.buffer_config,
            "dataset": self.config.dataset,
            "arch": self.config.arch,
            "layout": self.layout.to_json(),
            "seed": self.config.seed,
        }
        return _Snapshot(s["iteration"], tensors, meta)

    def restore(self, path: Path) -> None:
        """Load the checkpoint at ``path`` (already known to have this run's config)."""
        stored = store.read(path, store.CHECKPOINT_FORMAT)
        meta = stored.metadata
        tensors = stored.tensors
        images = store.require_tensor(stored, "images", ndim=4)
        if images.shape != (len(self.labels), self.prepared.channels, *self.prepared.image_size):
            raise DdppError(f"{path}: images of shape {tuple(images.shape)} do not fit this run.")
        experts = [int(e) for e in meta.get("experts") or []]
        missing = [e for e in experts if e not in self.expert_paths]
        if not experts or missing:
            raise DdppError(
                f"{path} uses experts {missing or experts} that the buffer at {self.buffer} "
                "no longer holds; resume with the buffer the run was started with (--buffer)."
            )
        generators = {}
        for name in _GENERATORS:
            generator = torch.Generator(device="cpu")
            generator.set_state(store.require_tensor(stored, f"rng_{name}", ndim=1))
            generators[name] = generator
        momentum = {
            name: tensors[f"momentum_{name}"]
            for name in ("images", "lr")
            if f"momentum_{name}" in tensors
        }
        self._set_state(
            iteration=int(meta["iteration"]),
            images=images,
            lr=store.require_tensor(stored, "lr", ndim=1),
            momentum=momentum,
            generators=generators,
            experts=experts,
            order=store.require_tensor(stored, "expert_order", ndim=1).long(),
            position=int(meta["expert_position"]),
            best=(meta.get("best_iteration"), meta.get("best_val_accuracy")),
            elapsed=float(meta.get("elapsed_seconds") or 0.0),
        )

    # -- files ----------------------------------------------------------------------------

    def as_set(self, images: torch.Tensor, lr: float, iteration: int) -> DistilledSet:
        settings = {
            **asdict(self.config),
            "iteration": iteration,
            "image_size": self.image_size_option,
            "data_seed": self.data_seed,
            "buffer": self.buffer_config,
            "buffer_path": str(self.buffer.resolve()),
        }
        return DistilledSet(
            images=images.detach().cpu(),
            labels=self.labels.cpu(),
            lr=lr,
            dataset=self.config.dataset,
            class_names=tuple(self.prepared.train.class_names),
            preprocessing=self.preprocessing,
            source="distill",
            arch=self.config.arch,
            settings=settings,
            seed=self.config.seed,
        )

    def save_set(
        self, path: Path, snapshot: _Snapshot, extra: dict[str, Any] | None = None
    ) -> Path:
        lr = float(snapshot.tensors["lr"][0])
        distilled = self.as_set(snapshot.tensors["images"], lr, snapshot.iteration)
        return save_set(path, distilled, {"iteration": snapshot.iteration, **(extra or {})})

    def snapshot_path(self, iteration: int) -> Path:
        """Where ``--snapshot-every`` keeps the images of ``iteration`` (for ``--animate``)."""
        return self.folder / SNAPSHOTS_DIRNAME / f"iter_{iteration:06d}.safetensors"

    def save_image_snapshot(self) -> Path:
        """The current images as a set file under ``snapshots/`` (``ddpp.distilled/1``)."""
        s = self.state
        iteration = s["iteration"]
        path = self.snapshot_path(iteration)
        path.parent.mkdir(exist_ok=True)
        distilled = self.as_set(s["images"], float(s["lr"].detach()), iteration)
        return save_set(path, distilled, {"iteration": iteration})

    def truncate_snapshots(self, iteration: int) -> None:
        """Drop image snapshots of iterations after ``iteration`` (redone after a resume)."""
        for path in sorted((self.folder / SNAPSHOTS_DIRNAME).glob("iter_*.safetensors")):
            number = path.stem.removeprefix("iter_")
            if number.isdigit() and int(number) > iteration:
                path.unlink()

    def save_checkpoint(self, snapshot: _Snapshot) -> None:
        self.save_set(self.paths["distilled"], snapshot)
        store.write(
            self.paths["checkpoint"], snapshot.tensors, store.CHECKPOINT_FORMAT, snapshot.meta
        )
        self.emit(CheckpointSaved(snapshot.iteration, self.paths["checkpoint"]))

    def log(self, record: dict[str, Any]) -> None:
        with open(self.paths["metrics"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, iteration: int) -> None:
        """Keep only the lines of iterations ≤ ``iteration`` (none at 0, whose line is redone);
        a torn last line is dropped too."""
        path = self.paths["metrics"]
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            number = record.get("iteration") if isinstance(record, dict) else None
            if isinstance(number, int) and 0 <= number <= iteration and iteration > 0:
                kept.append(line)
        store.atomic_write_text(path, "".join(line + "\n" for line in kept))

    # -- the algorithm --------------------------------------------------------------------

    def next_expert(self) -> int:
        s = self.state
        if s["position"] >= len(s["order"]):
            experts = torch.tensor(s["experts"])
            s["order"] = experts[torch.randperm(len(experts), generator=s["generators"]["experts"])]
            s["position"] = 0
        expert = int(s["order"][s["position"]])
        s["position"] += 1
        return expert

    def step(self) -> dict[str, Any]:
        """One iteration of SPEC §6; returns its metrics (the guard checks are the caller's)."""
        c, s = self.config, self.state
        expert = self.next_expert()
        start_epoch = int(
            torch.randint(c.max_start_epoch, (1,), generator=s["generators"]["start"])
        )
        start, target = (
            t.to(self.device)
            for t in read_snapshots(
                self.expert_paths[expert], (start_epoch, start_epoch + c.expert_epochs)
            )
        )
        images, alpha = s["images"], s["lr"]
        steps = plan_unroll(
            len(self.labels), c.syn_steps, c.batch_syn, self.dsa, self.prepared.image_size,
            s["generators"]["unroll"],
        )  # fmt: skip
        s["opt_images"].zero_grad(set_to_none=True)
        s["opt_lr"].zero_grad(set_to_none=True)
        result = match(
            self.student, start, target, images, self.labels, alpha, steps, c.eps, c.unroll
        )
        record = {
            "loss": result.loss,
            "pruned_fraction": result.pruned_fraction,
            "start_epoch": start_epoch,
            "expert": expert,
        }
        if not _finite(record["loss"]):
            return record
        s["opt_images"].step()
        s["opt_lr"].step()
        return record

    def validate(self, iteration: int) -> tuple[float, float]:
        c, s = self.config, self.state
        self.emit(ValidationStarted(iteration, c.eval_runs, c.eval_epochs))
        result = evaluate_images(
            s["images"].detach(), self.labels, self.val_images, self.val_labels,
            num_classes=self.prepared.num_classes, config=self.eval_config(c.eval_runs, "val_eval"),
            lr=float(s["lr"].detach()), device=self.device, on_event=self.emit,
        )  # fmt: skip
        return result.mean, result.std

    def eval_config(self, runs: int, purpose: str) -> EvalConfig:
        """The protocol of validation and test; the same seeds at every validation point."""
        c = self.config
        return EvalConfig(
            arch=c.arch, runs=runs, epochs=c.eval_epochs, dsa_strategy=c.dsa_strategy,
            seed=derive_seed(c.seed, purpose) % 2**31,
        )  # fmt: skip


def _pruned_stats(path: Path) -> dict[str, float]:
    values = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "pruned_fraction" in record:
                values.append(float(record["pruned_fraction"]))
    if not values:
        return {}
    return {"min": min(values), "max": max(values), "mean": sum(values) / len(values)}


def distill(
    config: DistillConfig,
    folder: Path,
    *,
    buffer: Path | None = None,
    data_root: Path | None = None,
    download: bool = True,
    device: torch.device | str = "cpu",
    on_event: EventCallback | None = None,
) -> DistillSummary:
    """Run (or resume, when ``folder`` holds a checkpoint) a distillation into ``folder``.

    Raises DdppError on bad input, :class:`DivergedError` when the run diverges (after saving
    the last good set), and re-raises KeyboardInterrupt after writing a checkpoint.
    """
    emit = on_event or (lambda event: None)
    device = torch.device(device)
    folder = Path(folder)
    checkpoint = folder / CHECKPOINT_NAME
    resuming = checkpoint.is_file()
    if resuming:
        previous = saved_config(folder)
        meta = store.read_metadata(checkpoint)
        if buffer is None and meta.get("buffer"):
            buffer = Path(meta["buffer"])
        # Values the buffer resolved are compared as resolved; None means "as before".
        filled = {
            k: getattr(previous, k)
            for k in ("zca", "train_subset", "val_size", *presets.DERIVED)
            if getattr(config, k) is None
        }
        config = replace(config, **filled)
        if config.identity() != previous.identity():
            raise DdppError(
                f"the run in {folder} was made with other settings "
                f"({store.describe_difference(previous.identity(), config.identity())}); resume "
                "without changing them, or start a new run with another --out."
            )
        if config.iterations < int(meta.get("iteration", 0)):
            raise DdppError(
                f"the run in {folder} has already done {meta.get('iteration')} iterations; "
                f"--iterations {config.iterations} is fewer."
            )
        if (
            meta.get("buffer_config") is not None
            and (Path(buffer) / MANIFEST_NAME).is_file()
            and read_manifest(Path(buffer)).get("config") != meta["buffer_config"]
        ):
            raise DdppError(
                f"the buffer at {buffer} was made with other settings than the one this run "
                "started from; resume with the original buffer (--buffer)."
            )
    elif folder.is_dir() and any(
        (folder / name).exists() for name in (DISTILLED_NAME, METRICS_NAME, BEST_NAME)
    ):
        raise DdppError(
            f"{folder} holds files of a run but no {CHECKPOINT_NAME} to resume from; use an "
            "empty --out."
        )
    buffer_dir = find_buffer(config, buffer)
    run = _Run(
        config, folder, buffer_dir, data_root=data_root, download=download, device=device, emit=emit
    )
    folder.mkdir(parents=True, exist_ok=True)
    store.remove_stale_temporaries(folder)
    derived: dict[str, str] = {}
    if resuming:
        config = run.config
        run.restore(checkpoint)
        run.truncate_metrics(run.state["iteration"])
        run.truncate_snapshots(run.state["iteration"])
    else:
        derived = autolr.calibrate(run)  # issue 14: lr_teacher / lr_lr left open (None)
        config = run.config
        run.fresh_state()
        if config.snapshot_every > 0:
            run.save_image_snapshot()  # the initial images: the animation's first frame
    s = run.state
    emit(
        DistillStarted(
            folder=folder, config=config, buffer=buffer_dir, experts=len(run.expert_paths),
            buffer_epochs=run.buffer_epochs, num_params=run.layout.numel,
            train_size=len(run.train_idx), val_size=len(run.val_idx),
            test_size=len(run.prepared.test.labels), preprocessing=run.preprocessing["kind"],
            start_iteration=s["iteration"], resumed=resuming, device=str(device),
            derived=derived,
        )
    )  # fmt: skip

    def validate_and_keep_best(iteration: int, record: dict[str, Any]) -> None:
        accuracy, std = run.validate(iteration)
        best_accuracy = s["best"][1]
        if best_accuracy is None or accuracy > best_accuracy:
            s["best"] = (iteration, accuracy)
            snap = run.snapshot()
            run.save_set(run.paths["best"], snap, {"val_accuracy": accuracy, "val_std": std})
        record.update(val_accuracy=accuracy, val_std=std)
        emit(ValidationFinished(iteration, accuracy, std, *s["best"]))

    snapshot: _Snapshot | None = run.snapshot()
    try:
        if s["iteration"] == 0:  # validate the initial images (redone on resume)
            started = time.perf_counter()
            record: dict[str, Any] = {"iteration": 0, "lr": float(s["lr"].detach())}
            if config.eval_every > 0:
                validate_and_keep_best(0, record)
            record["seconds"] = time.perf_counter() - started
            run.log(record)
            snapshot = run.snapshot()
            run.save_checkpoint(snapshot)
        while s["iteration"] < config.iterations:
            snapshot = run.snapshot()  # the last good state, for guards and Ctrl-C
            started = time.perf_counter()
            iteration = s["iteration"] + 1
            record = {"iteration": iteration, **run.step()}
            lr = float(s["lr"].detach())
            problem = None
            if not _finite(record["loss"]):
                problem = f"the matching loss became {record['loss']}"
            elif not _finite(lr) or lr <= 0:
                problem = f"the learned lr became {lr}"
            elif not bool(torch.isfinite(s["images"].detach()).all()):
                problem = "the images became non-finite"
            if problem is not None:
                path = run.save_set(run.paths["distilled"], snapshot, {"diverged_at": iteration})
                run.log({**record, "lr": lr, "diverged": problem})
                raise DivergedError(
                    f"{problem} at iteration {iteration} (expert {record['expert']}, start "
                    f"epoch {record['start_epoch']}); the run diverged. The last good set "
                    f"(iteration {snapshot.iteration}) is in {path}. "
                    + autolr.divergence_advice(lr, config),
                    iteration=iteration,
                    distilled=path,
                    metrics=run.paths["metrics"],
                )
            s["iteration"] = iteration
            record["lr"] = lr
            seconds = time.perf_counter() - started
            emit(
                IterationFinished(
                    iteration, config.iterations, record["loss"], record["pruned_fraction"], lr,
                    record["start_epoch"], record["expert"], seconds,
                )
            )  # fmt: skip
            if config.eval_every > 0 and (
                iteration % config.eval_every == 0 or iteration == config.iterations
            ):
                validate_and_keep_best(iteration, record)
            record["seconds"] = time.perf_counter() - started
            s["elapsed"] += record["seconds"]
            record["elapsed"] = s["elapsed"]
            run.log(record)
            if config.snapshot_every > 0 and iteration % config.snapshot_every == 0:
                run.save_image_snapshot()
            if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
                run.save_checkpoint(run.snapshot())
    except KeyboardInterrupt:
        if snapshot is not None:
            run.save_checkpoint(snapshot)
        raise

    return _finish(run)


def _finish(run: _Run) -> DistillSummary:
    """Test the best set (or the final one) once and write ``summary.json``."""
    config, s = run.config, run.state
    best_iteration, best_accuracy = s["best"]
    best = run.paths["best"] if best_iteration is not None and run.paths["best"].is_file() else None
    tested = best or run.paths["distilled"]
    test: EvalResult | None = None
    previous = None
    if run.paths["summary"].is_file():
        try:
            previous = json.loads(run.paths["summary"].read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = None
    if config.test_runs > 0:
        if (
            isinstance(previous, dict)
            and previous.get("iterations") == s["iteration"]
            and previous.get("best_iteration") == best_iteration
            and isinstance(previous.get("test"), dict)
            and previous["test"].get("protocol", {}).get("runs") == config.test_runs
            and previous["test"].get("protocol", {}).get("epochs") == config.eval_epochs
        ):
            test = EvalResult(**previous["test"])  # the test set is used once
        else:
            chosen = load_set(tested)
            run.emit(TestStarted(tested, config.test_runs, config.eval_epochs))
            test = evaluate_images(
                chosen.images, chosen.labels, run.prepared.test.images, run.prepared.test.labels,
                num_classes=run.prepared.num_classes, lr=chosen.lr, device=run.device,
                config=run.eval_config(config.test_runs, "test_eval"), on_event=run.emit,
            )  # fmt: skip
            run.emit(TestFinished(tested, test))
    summary = DistillSummary(
        folder=run.folder,
        distilled=run.paths["distilled"],
        best=best,
        checkpoint=run.paths["checkpoint"],
        metrics=run.paths["metrics"],
        summary=run.paths["summary"],
        iterations=s["iteration"],
        final_lr=float(s["lr"].detach()),
        best_iteration=best_iteration,
        best_val_accuracy=best_accuracy,
        tested=tested if test is not None else None,
        test=test,
        pruned_fraction=_pruned_stats(run.paths["metrics"]),
        seconds=s["elapsed"],
    )
    store.atomic_write_text(
        run.paths["summary"], json.dumps(summary_json(summary), indent=2) + "\n"
    )
    return summary


def summary_json(summary: DistillSummary) -> dict[str, Any]:
    """The JSON form of a summary (``summary.json`` and ``ddpp distill --json``)."""
    return {
        "folder": str(summary.folder),
        "distilled": str(summary.distilled),
        "best": None if summary.best is None else str(summary.best),
        "checkpoint": str(summary.checkpoint),
        "metrics": str(summary.metrics),
        "iterations": summary.iterations,
        "final_lr": summary.final_lr,
        "best_iteration": summary.best_iteration,
        "best_val_accuracy": summary.best_val_accuracy,
        "tested": None if summary.tested is None else str(summary.tested),
        "test": None if summary.test is None else summary.test.to_json(),
        "pruned_fraction": summary.pruned_fraction,
        "seconds": summary.seconds,
        "ddpp_version": __version__,
    }
