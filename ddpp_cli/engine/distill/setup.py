"""What a run is made of before its first iteration: the buffer (checked against the config),
the data prepared as the buffer was, the validation split, the model and the student, and the
first state (fresh, or from a checkpoint)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data, layout, models, store, zca
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.buffer import BufferManifest, expert_files, read_manifest
from ddpp_cli.engine.device import make_generator, seeded
from ddpp_cli.engine.distill import teacher
from ddpp_cli.engine.distill.buffer import buffer_command, check_buffer
from ddpp_cli.engine.distill.config import DistillConfig
from ddpp_cli.engine.distill.methods import MethodInfo, get_method, list_methods
from ddpp_cli.engine.distill.state import LABEL_OPTIMIZER, DistillState, StateDict
from ddpp_cli.engine.distill.step import read_snapshots
from ddpp_cli.engine.distill.validation import check_ipc, split_validation, validation_size
from ddpp_cli.engine.distilled import DistilledSet, label_vectors_text, zca_reference
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice, OnEvent
from ddpp_cli.engine.functional import ParamLayout
from ddpp_cli.engine.kip.krr import centred_one_hot
from ddpp_cli.engine.layout import ZCA_CACHE_DIRNAME, ZCA_NAME
from ddpp_cli.engine.preprocess import PreparedData, prepare, save_fitted_zca
from ddpp_cli.engine.student import Student
from ddpp_cli.engine.training import LabelVectors


@dataclass
class RunSetup:
    """The fixed parts of a run: its resolved config, buffer, data split, model and labels.

    Methods other than tm have no buffer (``buffer`` None, no manifest, no experts) and no
    student; they draw real images from ``real_by_class``: the training split without the
    validation images, one tensor per class, on the device, made once.
    """

    config: DistillConfig  # resolved against the buffer (zca, train_subset, val_size)
    buffer: Path | None
    manifest: BufferManifest | None  # None without a buffer
    expert_paths: dict[int, Path]
    prepared: PreparedData
    preprocessing: dict[str, Any]
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    layout: ParamLayout
    student: Student | None
    labels: torch.Tensor  # class-major hard labels, on the device
    device: torch.device
    world: World = field(default_factory=World)  # under torchrun: this rank's place
    real_by_class: list[torch.Tensor] | None = None
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, logits), once made

    @property
    def buffer_config(self) -> dict[str, Any]:
        return self.manifest.config if self.manifest is not None else {}

    @property
    def buffer_epochs(self) -> int:
        return int(self.manifest.epochs)

    def as_set(
        self,
        images: torch.Tensor,
        lr: float | None,
        iteration: int,
        targets: torch.Tensor | None = None,
    ) -> DistilledSet:
        """The distilled-set file's content for ``images`` and ``lr`` at ``iteration`` (lr None
        for a method that learns no step size: evaluation then uses its default, as for a
        coreset); learned label vectors ``targets`` are kept as the set's (KIP: MSE; tm: soft
        CE at temperature 1), as are tm's teacher labels."""
        settings = {**asdict(self.config), "iteration": iteration}
        if self.buffer is not None:
            settings.update(
                image_size=self.manifest.image_size,
                data_seed=self.manifest.seed,
                buffer=self.buffer_config,
                buffer_path=str(self.buffer.resolve()),
            )
        else:
            settings.update(data_seed=self.config.seed, learned_lr=False)
        return DistilledSet(
            images=images.detach().cpu(), labels=self.labels.cpu(), lr=lr,
            dataset=self.config.dataset, class_names=tuple(self.prepared.train.class_names),
            preprocessing=self.preprocessing, source="distill", arch=self.config.arch,
            settings=settings, seed=self.config.seed, **self._label_vectors(targets),
        )  # fmt: skip

    def _label_vectors(self, targets: torch.Tensor | None) -> dict[str, Any]:
        """The set's label-vector fields: learned ``targets`` (kip's MSE, tm's soft CE) or tm's
        teacher labels; none with hard labels."""
        mode = self.config.labels or "hard"
        if mode == "teacher":
            targets = self.teacher_start()[1]
        if targets is None:
            return {}
        if mode == "hard":  # kip
            return {
                "targets": targets.detach().cpu(),
                "label_mode": "learned",
                "target_loss": "mse",
            }
        return {
            "targets": targets.detach().cpu().float(), "label_mode": mode,
            "target_loss": "soft-ce", "temperature": 1.0,
        }  # fmt: skip

    def teacher_start(self) -> tuple[torch.Tensor, torch.Tensor]:
        """DATM's start (``engine/distill/teacher.py``): IPC real training images per class
        that the experts (in index order, final snapshots) classify correctly, taken in the
        ``init`` draw's order, and their averaged correct logits; made once per setup."""
        if self.teacher is None:
            c, train = self.config, self.prepared.train
            experts = sorted(self.expert_paths)
            last = self.buffer_epochs
            thetas = [
                read_snapshots(self.expert_paths[e], (last,))[0].to(self.device) for e in experts
            ]
            generator = make_generator(c.seed, "init")
            pool_labels = train.labels[self.train_idx]
            shuffled = data.shuffled_per_class(pool_labels, self.prepared.num_classes, generator)
            candidates = [self.train_idx[members] for members in shuffled]
            model = self.student.model
            chosen = teacher.select_correct(
                model, self.layout, thetas, candidates, train.images, c.ipc, train.class_names
            )
            images = train.images[chosen].clone()
            logits = teacher.teacher_logits(model, self.layout, thetas, images, self.labels)
            self.teacher = (images, logits.detach())
        return self.teacher

    def label_vectors(self, targets: torch.Tensor | None) -> LabelVectors | None:
        """What validation trains with: the label vectors the set will carry, with the loss it
        will be evaluated with (tm's teacher or learned labels: soft CE at T 1; kip's learned
        labels: MSE); None (the hard labels) for a set without them."""
        fields = self._label_vectors(targets)
        if not fields:
            return None
        mode, loss, temperature = (
            fields["label_mode"],
            fields["target_loss"],
            fields.get("temperature"),
        )
        return LabelVectors(
            fields["targets"].float().to(self.device), loss, temperature,
            label_vectors_text(mode, loss, temperature),
        )  # fmt: skip

    def matching_labels(self) -> torch.Tensor:
        """What the unroll's inner loss is taken against when the state holds no learned label
        vectors: the hard labels, or (``--labels teacher``) the teacher's logits."""
        if self.config.labels == "teacher":
            return self.teacher_start()[1].to(self.device)
        return self.labels

    def checkpoint_contents(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What every checkpoint holds besides the state: the labels and the run's settings."""
        meta = {
            "config": asdict(self.config),
            "method": self.config.method,
            "buffer": None if self.buffer is None else str(self.buffer.resolve()),
            "buffer_config": self.buffer_config if self.buffer is not None else None,
            "dataset": self.config.dataset,
            "arch": self.config.arch,
            "layout": self.layout.to_json(),
            "seed": self.config.seed,
        }
        return {"labels": self.labels.detach().clone()}, meta

    def initial_images(self) -> torch.Tensor:
        """Iteration 0's images: IPC random real training images per class, or noise."""
        c, train = self.config, self.prepared.train
        generator = make_generator(c.seed, "init")
        if c.init == "noise":
            return torch.randn((len(self.labels), *train.images.shape[1:]), generator=generator)
        pool_labels = train.labels[self.train_idx]
        shuffled = data.shuffled_per_class(pool_labels, self.prepared.num_classes, generator)
        chosen = torch.cat([self.train_idx[members[: c.ipc]] for members in shuffled])
        return train.images[chosen].clone()

    def fresh_state(self) -> DistillState:
        """Iteration 0: initial images, α = lr_teacher (tm), new generators."""
        c, info = self.config, get_method(self.config.method)
        if not info.needs_buffer:
            return DistillState.start_method(
                self.initial_images(), seed=c.seed, lr_img=c.lr_img, device=self.device,
                streams=info.generators, optimizer=info.optimizer,
                targets=self.initial_targets(), lr_targets=c.lr_labels,
            )  # fmt: skip
        if c.labels in (None, "hard"):
            return DistillState.start(
                self.initial_images(), c.lr_teacher, list(self.expert_paths), seed=c.seed,
                lr_img=c.lr_img, lr_lr=c.lr_lr, device=self.device,
            )  # fmt: skip
        images, logits = self.teacher_start()
        return DistillState.start(
            images, c.lr_teacher, list(self.expert_paths), seed=c.seed, lr_img=c.lr_img,
            lr_lr=c.lr_lr, device=self.device,
            targets=logits if c.labels == "learned" else None, lr_targets=c.lr_labels,
        )  # fmt: skip

    def initial_targets(self) -> torch.Tensor | None:
        """Iteration 0's learned label vectors (``--learn-labels``): KIP's one-hot minus 1/K;
        None when the method learns none."""
        if not self.config.learn_labels:
            return None
        return centred_one_hot(self.labels, self.prepared.num_classes)

    def restored_state(self, saved: StateDict, path: Path) -> DistillState:
        """The state of the checkpoint at ``path``, checked to fit this run."""
        shape = (len(self.labels), self.prepared.channels, *self.prepared.image_size)
        if saved.images.shape != shape:
            raise DdppError(
                f"{path}: images of shape {tuple(saved.images.shape)} do not fit this run."
            )
        experts = saved.meta["experts"]
        missing = [e for e in experts if e not in self.expert_paths]
        if get_method(self.config.method).needs_buffer and (not experts or missing):
            raise DdppError(
                f"{path} uses experts {missing or experts} that the buffer at {self.buffer} "
                "no longer holds; resume with the buffer the run was started with (--buffer)."
            )
        c = self.config
        return DistillState.from_state_dict(
            saved, lr_img=c.lr_img, lr_lr=c.lr_lr, device=self.device,
            optimizer=get_method(c.method).optimizer, lr_targets=c.lr_labels,
            targets_optimizer=LABEL_OPTIMIZER if c.labels == "learned" else None,
        )  # fmt: skip


def set_up(
    config: DistillConfig,
    buffer: Path,
    *,
    data_root: Path | None,
    download: bool,
    device: torch.device,
    emit: OnEvent,
    world: World | None = None,
) -> RunSetup:
    """Check the buffer against ``config``, load the data as the buffer was made, split off
    the validation images and build the student (sharing each minibatch with the other ranks
    of ``world``); DdppError on any mismatch."""
    world = world or World()
    manifest = read_manifest(buffer)
    check_buffer(config, buffer, manifest)
    if config.train_subset is None and manifest.train_subset is not None:
        config = replace(config, train_subset=int(manifest.train_subset))
    config = replace(config, zca=manifest.is_zca)
    expert_paths = expert_files(buffer)
    if not expert_paths:
        raise DdppError(
            f"the buffer at {buffer} holds no expert files yet; finish it with "
            f"'{buffer_command(config, buffer)}'."
        )
    prepared, preprocessing = _prepare_data(config, buffer, manifest, data_root, download)
    num_classes = prepared.num_classes
    config, train_idx, val_idx, model = _split_and_network(config, prepared)
    layout = ParamLayout.of(model)
    layout.check_compatible(manifest.layout, f"the buffer at {buffer}")
    _check_shardable(config.arch, model, world)
    dsa = DSA(config.dsa_strategy)
    student = Student(
        model.to(device).train(), layout, dsa, amp=config.amp, compile=config.compile,
        channels_last=config.channels_last, on_notice=lambda text: emit(Notice(text)),
        world=world,
    )  # fmt: skip
    for path in expert_paths.values():
        _check_expert(path, (int(manifest.epochs) + 1, layout.numel))
    labels = torch.arange(num_classes).repeat_interleave(config.ipc).to(device)
    return RunSetup(
        config=config, buffer=buffer, manifest=manifest, expert_paths=expert_paths,
        prepared=prepared, preprocessing=preprocessing, train_idx=train_idx, val_idx=val_idx,
        layout=layout, student=student, labels=labels, device=device, world=world,
    )  # fmt: skip


def set_up_method(
    config: DistillConfig,
    *,
    data_root: Path | None,
    download: bool,
    device: torch.device,
    world: World | None = None,
) -> RunSetup:
    """The setup of a method without buffer (dc, dsa, dm, cafe): the data normalised as the
    dataset's table says (``image_size`` resizes), the validation split, and the per-class real
    pools without the validation images; DdppError where the method cannot run."""
    world, info = world or World(), get_method(config.method)
    if world.distributed and not info.distributed:
        allowed = ", ".join(m for m in list_methods() if get_method(m).distributed)
        raise DdppError(
            f"--method {config.method} runs in one process; torchrun is only supported for "
            f"--method {allowed}. Run it without torchrun."
        )
    use_zca = info.zca_fit is not None and (
        config.zca if config.zca is not None else data.info(config.dataset).default_zca
    )
    zca_path = _method_zca(config, info, data_root, download) if use_zca else None
    prepared = prepare(
        config.dataset, data_root, use_zca=use_zca, download=download,
        train_subset=config.train_subset, image_size=config.image_size, seed=config.seed,
        channels=config.channels, whitening=None if zca_path is None else zca.load(zca_path),
    )  # fmt: skip
    num_classes = prepared.num_classes
    config, train_idx, val_idx, model = _split_and_network(replace(config, zca=use_zca), prepared)
    if info.check_network is not None:  # DdppError where the network cannot serve the method
        info.check_network(config, model, prepared.train.images[:1])
    pool_images = prepared.train.images[train_idx]
    pool_labels = prepared.train.labels[train_idx]
    real_by_class = [pool_images[pool_labels == c].to(device) for c in range(num_classes)]
    labels = torch.arange(num_classes).repeat_interleave(config.ipc).to(device)
    return RunSetup(
        config=config, buffer=None, manifest=None, expert_paths={}, prepared=prepared,
        preprocessing=(
            prepared.preprocessing.describe() if zca_path is None else zca_reference(zca_path)
        ),
        train_idx=train_idx, val_idx=val_idx,
        layout=ParamLayout.of(model), student=None, labels=labels, device=device, world=world,
        real_by_class=real_by_class,
    )  # fmt: skip


def method_zca_path(config: DistillConfig) -> Path:
    """Where the ZCA of a method without buffer is kept (fitted once, shared by its runs):
    ``<data home>/zca/<dataset>-<method>-<image size>-<channels>-seed<seed>.safetensors`` (the
    seed fixes the split of single-folder datasets)."""
    size = config.image_size or "native"
    channels = config.channels or "native"
    name = f"{config.dataset}-{config.method}-{size}-{channels}-seed{config.seed}"
    return layout.data_home() / ZCA_CACHE_DIRNAME / f"{name}.safetensors"


def _method_zca(
    config: DistillConfig, info: MethodInfo, data_root: Path | None, download: bool
) -> Path:
    """The method's ZCA (``info.zca_fit``, e.g. KIP's) of the whole train split in [0, 1],
    fitted and saved on first use, read back afterwards."""
    path = method_zca_path(config)
    if not path.is_file():
        save_fitted_zca(
            info.zca_fit, config.dataset, path, root=data_root, download=download,
            image_size=config.image_size, seed=config.seed, channels=config.channels,
        )  # fmt: skip
    return path


def _split_and_network(
    config: DistillConfig, prepared: PreparedData
) -> tuple[DistillConfig, torch.Tensor, torch.Tensor, torch.nn.Module]:
    """The config with its validation size resolved, the training and validation indices (the
    split seeded by the run's seed), checked against the IPC, and the network of the run's
    architecture for the data (initialised from seed 0: its layout, not its values, matters)."""
    num_classes = prepared.num_classes
    config = replace(
        config, val_size=validation_size(config, len(prepared.train.labels), num_classes)
    )
    train_idx, val_idx = split_validation(
        prepared.train.labels, num_classes, config.val_size,
        make_generator(config.seed, "val_split"),
    )  # fmt: skip
    counts = torch.bincount(prepared.train.labels[train_idx], minlength=num_classes).tolist()
    check_ipc(config.ipc, counts, prepared.train.class_names, config.val_size)
    with seeded(0):
        model = models.create(config.arch, prepared.channels, num_classes, prepared.image_size)
    return config, train_idx, val_idx, model


def _prepare_data(
    config: DistillConfig,
    buffer: Path,
    manifest: BufferManifest,
    data_root: Path | None,
    download: bool,
) -> tuple[PreparedData, dict[str, Any]]:
    """The data prepared as the buffer's (same subset, size, seed, ZCA) and its description."""
    zca_path = buffer / ZCA_NAME
    whitening = None
    if config.zca:
        if not zca_path.is_file():
            raise DdppError(
                f"the buffer at {buffer} is ZCA-whitened but its {ZCA_NAME} is missing; "
                "remake the buffer."
            )
        whitening = zca.load(zca_path)
    prepared = prepare(
        config.dataset, data_root, use_zca=bool(config.zca), download=download,
        train_subset=config.train_subset, image_size=manifest.image_size,
        seed=manifest.seed, channels=manifest.data.channels, whitening=whitening,
        # exactly what the experts saw (e.g. an MTT CIFAR-100 import: CIFAR-10's mean/std)
        normalization=None if config.zca else manifest.normalization,
    )  # fmt: skip
    described = manifest.data
    recorded_size = None if described.image_size is None else list(described.image_size)
    found = {  # what the buffer recorded, what the data found now has
        "channels": (described.channels, prepared.channels),
        "image_size": (recorded_size, list(prepared.image_size)),
        "num_classes": (described.num_classes, prepared.num_classes),
    }
    for key, (recorded, value) in found.items():
        if recorded is not None and recorded != value:
            raise DdppError(
                f"the buffer at {buffer} was made on data with {key} {recorded}, but the "
                f"data found now has {value}; pass the --data-dir the buffer was made from."
            )
    preprocessing = zca_reference(zca_path) if config.zca else prepared.preprocessing.describe()
    return prepared, preprocessing


def _check_shardable(arch: str, model: torch.nn.Module, world: World) -> None:
    """DdppError when ranks would share minibatches of a network with batch statistics (a
    shard's BatchNorm statistics are not the minibatch's, so the result would change)."""
    if world.distributed and any(
        isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules()
    ):
        raise DdppError(
            f"--arch {arch} uses BatchNorm, whose statistics change when the ranks split a "
            "minibatch; distill it in one process, or with an architecture without BatchNorm."
        )


def _check_expert(path: Path, shape: tuple[int, int]) -> None:
    """DdppError unless ``path`` is a trajectory file whose ``params`` has ``shape``."""
    found = store.read_shapes(path, store.TRAJECTORY_FORMAT).get("params", ())
    if found != shape:
        raise DdppError(
            f"{path} holds a trajectory of shape {found}, but the buffer's manifest and "
            f"architecture need {shape}; remove the file and rerun 'ddpp buffer'."
        )
