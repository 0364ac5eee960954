"""The settings of a distillation run (SPEC §6): :class:`DistillConfig`, where its buffer and run
folder are, and the one rule that merges preset, saved run and given options (:func:`resolve`,
with :func:`resume_config` for what a resumed run may change)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs

from ddpp_cli.engine import augment, data, models, presets, store
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.buffer import BufferManifest, default_buffer_dir
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.gradient_matching import LOOPS
from ddpp_cli.engine.layout import MANIFEST_NAME
from ddpp_cli.engine.unroll import AMP_MODES, UNROLL_MODES

CHECKPOINT_NAME = "checkpoint.safetensors"
INITS = ("real", "noise")
# tm: trajectory matching (MTT, with DDPP's pruning); dc/dsa: gradient matching without/with
# Siamese DSA; dm: distribution matching; cafe: CAFE (docs/methods.md).
METHODS = ("tm", "dc", "dsa", "dm", "cafe")
# The settings that apply to some methods only (option name = field name; "buffer" and
# "auto_lr" are options of the command, not fields). Any other setting applies to every method.
_TM_ONLY = (
    "syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "lr_lr", "lr_teacher", "eps",
    "unroll", "unroll_budget", "amp", "compile", "channels_last", "buffer", "auto_lr",
)  # fmt: skip
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_TM_ONLY, ("tm",)),
    "image_size": ("dc", "dsa", "dm", "cafe"),  # tm: the buffer's
    "batch_real": ("dc", "dsa", "dm", "cafe"),
    "lr_net": ("dc", "dsa", "cafe"),
    "outer_loop": ("dc", "dsa"),
    "inner_loop": ("dc", "dsa"),
    "max_image_steps": ("cafe",),
    "max_inner_epochs": ("cafe",),
}
DM_LARGE_IPC = 100  # from here DM's README uses lr_img 10 instead of 1
# A setting that does not apply to the config's method holds this value (None where not listed).
DEFAULT_UNROLL_BUDGET = 2048  # MiB of kept step graphs in --unroll memory (docs/performance.md)
_UNSET = {
    "unroll": "graph", "unroll_budget": DEFAULT_UNROLL_BUDGET, "amp": "off", "compile": False,
    "channels_last": False,
}  # fmt: skip
# The papers' defaults of the other methods (METHODS.md §1–4); DC/DSA's loops come from
# get_loops(ipc) (gradient_matching.LOOPS).
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "dc": {"iterations": 1000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256, "init": "noise"},
    "dsa": {"iterations": 1000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256, "init": "real"},
    "dm": {"iterations": 20000, "lr_img": 1.0, "batch_real": 256, "init": "real"},
    "cafe": {
        "iterations": 2000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256, "init": "noise",
        "max_image_steps": 100, "max_inner_epochs": 100,
    },
}  # fmt: skip
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
    "unroll_budget",
    "compile",
    "channels_last",
)
# Settings a run resolves when it starts (from the buffer and the data) where the config has None.
RESOLVED_AT_START = ("zca", "train_subset", "val_size", *presets.DERIVED)
ALL_IMAGES = 0  # batch_syn as given on the command line for "every image each step" (None here)


@dataclass(frozen=True)
class DistillConfig:
    """Everything that determines a distillation run (SPEC §6); see :meth:`from_preset`.

    ``method`` is one of :data:`METHODS`; a setting that does not apply to it
    (:data:`METHOD_SETTINGS`) must stay None (or, for tm's execution options, at its default):
    build another method's config with :meth:`from_preset` or :meth:`with_method`, never by
    replacing ``method`` in a tm config (refused, naming the first tm setting it holds).

    ``zca`` and ``train_subset`` None mean "as the buffer was made"; ``val_size`` None means
    10 % of the training split (at most 5000); ``batch_syn`` None means all images every step;
    ``eval_every`` 0 turns validation off; ``test_runs`` 0 skips the final test.

    Execution (docs/performance.md): ``unroll`` "graph" keeps the unrolled graph (memory grows
    with ``syn_steps``), "memory" recomputes one step at a time in reverse (memory bounded
    whatever ``syn_steps`` is, same gradients) except the last steps whose graphs fit
    ``unroll_budget`` MiB, which it keeps from the forward pass; ``amp`` "bf16" autocasts the
    student's forward (GPU; loss, mask and updates stay float32); ``compile`` wraps the per-step
    gradient in ``torch.compile``; ``channels_last`` uses channels-last activations (helps on
    GPUs, not on the CPU).
    """

    dataset: str
    ipc: int
    syn_steps: int | None = None  # tm only (needed there), like the next four
    expert_epochs: int | None = None
    max_start_epoch: int | None = None
    lr_img: float | None = None  # needed
    lr_lr: float | None = None  # tm; None: derived when the run starts (engine/autolr.py)
    lr_teacher: float | None = None  # tm; None: derived likewise
    batch_syn: int | None = None
    zca: bool | None = None
    arch: str = "convnet"
    eps: float | None = None  # tm: None means 0.1 (the paper's)
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
    unroll_budget: int = DEFAULT_UNROLL_BUDGET
    amp: str = "off"
    compile: bool = False
    channels_last: bool = False
    method: str = "tm"
    # The other methods' settings (METHOD_SETTINGS; None where the method has none).
    image_size: int | None = None  # None: the dataset's own
    batch_real: int | None = None
    lr_net: float | None = None
    outer_loop: int | None = None
    inner_loop: int | None = None
    max_image_steps: int | None = None
    max_inner_epochs: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", data.info(self.dataset).name)
        models.check_known(self.arch)
        if self.ipc < 1:
            raise DdppError(f"--ipc must be at least 1 (got {self.ipc}).")
        if self.method not in METHODS:
            raise DdppError(f"--method must be one of: {', '.join(METHODS)} (got '{self.method}').")
        self._check_method_settings()
        if self.method == "tm":
            if self.eps is None:
                object.__setattr__(self, "eps", 0.1)
            if not 0.0 <= self.eps < 1.0:
                raise DdppError(
                    f"--eps must be in [0, 1) (got {self.eps}); 0 turns pruning off, 0.1 is the "
                    "paper's value."
                )
            for name in ("syn_steps", "expert_epochs", "max_start_epoch"):
                _at_least(name, getattr(self, name), 1)
        else:
            self._check_other_method()
        _at_least("iterations", self.iterations, 1)
        for name in ("eval_runs", "eval_epochs", "checkpoint_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("eval_every", "test_runs", "snapshot_every", "unroll_budget"):
            _at_least(name, getattr(self, name), 0)
        for name in ("batch_syn", "train_subset"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if self.val_size is not None:
            _at_least("val_size", self.val_size, 0)
            if self.val_size == 0 and self.eval_every > 0:
                raise DdppError("--val-size 0 leaves nothing to validate on; use --eval-every 0.")
        for name in ("lr_img", "lr_teacher", "lr_net"):
            value = getattr(self, name)
            if name != "lr_img" and value is None:  # derived when the run starts, or not used
                continue
            if value is None:
                raise DdppError(f"{_flag(name)} is needed (no preset gave one).")
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

    def _check_method_settings(self) -> None:
        """DdppError naming the first setting given that does not apply to the method."""
        for name, methods in METHOD_SETTINGS.items():
            if self.method in methods or not hasattr(self, name):
                continue
            if getattr(self, name) != _UNSET.get(name):
                raise not_applicable(name, self.method)

    def _check_other_method(self) -> None:
        """The settings of dc/dsa/dm/cafe (METHODS.md §1–4)."""
        if self.zca:
            raise DdppError(
                f"--method {self.method} distills normalised images (as its reference does); "
                "ZCA is only available with --method tm. Drop --zca."
            )
        if self.method in ("dc", "dsa") and (self.outer_loop is None or self.inner_loop is None):
            listed = ", ".join(map(str, LOOPS))
            raise DdppError(
                f"--method {self.method} has loop lengths only for IPC {listed} (the "
                f"reference's get_loops); give --outer-loop and --inner-loop for IPC {self.ipc}."
            )
        needed = {
            "dc": ("batch_real", "lr_net", "outer_loop"),
            "dsa": ("batch_real", "lr_net", "outer_loop"),
            "dm": ("batch_real",),
            "cafe": ("batch_real", "lr_net", "max_image_steps", "max_inner_epochs"),
        }[self.method]
        for name in needed:
            if getattr(self, name) is None:
                raise DdppError(f"{_flag(name)} is needed for --method {self.method}.")
            if name != "lr_net":
                _at_least(name, getattr(self, name), 1)
        if self.inner_loop is not None:
            _at_least("inner_loop", self.inner_loop, 0)
        if self.image_size is not None:
            _at_least("image_size", self.image_size, 1)
        if self.method == "cafe" and not self.arch.startswith("convnet"):
            raise DdppError(
                "--method cafe aligns the features of ConvNet's blocks (its reference's "
                f"network); use --arch convnet, not '{self.arch}'."
            )

    @property
    def matching_dsa(self) -> str:
        """The augmentation of the method's matching and inner training: DSA for tm, dsa and
        dm; none for dc and cafe (as their references). Evaluation always uses ``dsa_strategy``."""
        return self.dsa_strategy if self.method in ("tm", "dsa", "dm") else augment.NONE

    @classmethod
    def from_preset(
        cls, dataset: str, ipc: int, *, derive: bool = False, method: str = "tm", **values: Any
    ) -> DistillConfig:
        """A config with the preset of ``method`` for ``dataset``/``ipc`` where ``values`` has
        None: SPEC §6's for tm, the paper's defaults (:data:`METHOD_PRESETS`) for the others.

        tm: the preset's ZCA choice only picks the default buffer; the buffer's own
        preprocessing decides (``zca`` stays None unless given). ``lr_teacher`` and ``lr_lr``
        stay None (derived when the run starts, engine/autolr.py) for datasets without a paper
        row, and on a paper row too with ``derive`` (``--auto-lr``).
        """
        given = {k: v for k, v in values.items() if v is not None}
        preset = method_preset(method, dataset, ipc, derive=derive)
        return cls(dataset=dataset, ipc=ipc, method=method, **{**preset, **given})

    def with_method(self, method: str, **changes: Any) -> DistillConfig:
        """This run's shared settings (data, IPC, architecture, seed, length, validation, test,
        checkpoints) with ``method`` and its preset; ``changes`` (None = preset) on top. What
        ``ddpp run --compare`` uses to run several methods alike; ``iterations`` and ``init``
        become the method's preset unless given."""
        shared = {
            name: getattr(self, name)
            for name in asdict(self)
            if name not in METHOD_SETTINGS and name not in METHOD_PRESET_FIELDS
        }
        shared.pop("method")
        shared.pop("zca")
        return DistillConfig.from_preset(
            self.dataset, self.ipc, method=method,
            **{**{k: v for k, v in shared.items() if k not in ("dataset", "ipc")}, **changes},
        )  # fmt: skip

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

    def check_buffer(self, folder: Path, manifest: BufferManifest) -> None:
        """DdppError when the buffer does not fit: dataset, architecture, preprocessing, epochs."""
        dataset = manifest.dataset
        if not isinstance(dataset, str) or data.info(dataset).name != self.dataset:
            raise DdppError(
                f"the buffer at {folder} was made for dataset '{dataset}', not "
                f"'{self.dataset}'; pass a {self.dataset} buffer with --buffer or make one with "
                f"'{self.buffer_command()}'."
            )
        if manifest.arch != self.arch:
            raise DdppError(
                f"the buffer at {folder} was made with architecture '{manifest.arch}', "
                f"not '{self.arch}'; pass --arch {manifest.arch} or make a buffer with "
                f"'{self.buffer_command()}'."
            )
        if self.zca is not None and manifest.is_zca != self.zca:
            raise DdppError(
                f"the buffer at {folder} is {'ZCA-whitened' if manifest.is_zca else 'normalised'}"
                f" but {'--zca' if self.zca else '--no-zca'} was given; drop the option or pass "
                "a matching buffer."
            )
        epochs = manifest.epochs or 0
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


def not_applicable(name: str, method: str) -> DdppError:
    """The error for a setting (or option) ``name`` given with a method it does not apply to."""
    methods = METHOD_SETTINGS.get(name, METHODS)
    flag = _flag("buffer" if name == "buffer_dir" else name)
    return DdppError(
        f"{flag} does not apply to --method {method} (only to {', '.join(methods)}); drop it."
    )


def lighter_unroll(config: DistillConfig) -> str:
    """The options that continue ``config``'s run in less memory ("" when there are none: the
    other methods, or tm already recomputing every step)."""
    if config.method != "tm":
        return ""
    if config.unroll == "graph":
        return " --unroll memory"
    return " --unroll-budget 0" if config.unroll_budget > 0 else ""


def check_options(method: str, names: Iterable[str]) -> None:
    """DdppError naming the first option of ``names`` (field or option names, e.g. ``buffer``,
    ``auto_lr``) that does not apply to ``method``."""
    if method not in METHODS:
        raise DdppError(f"--method must be one of: {', '.join(METHODS)} (got '{method}').")
    for name in names:
        key = "buffer" if name == "buffer_dir" else name
        if key in METHOD_SETTINGS and method not in METHOD_SETTINGS[key]:
            raise not_applicable(key, method)


# Settings every method has but whose preset differs by method.
METHOD_PRESET_FIELDS = ("lr_img", "iterations", "init")


def method_preset(method: str, dataset: str, ipc: int, *, derive: bool = False) -> dict[str, Any]:
    """The preset values of ``method`` for ``dataset``/``ipc`` (tm: SPEC §6 without ZCA, which
    the buffer decides; the others: the paper's defaults, DC/DSA's loops by IPC)."""
    if method == "tm":
        preset = presets.resolve(dataset, ipc, derive=derive)
        del preset["zca"]
        return preset
    if method not in METHOD_PRESETS:
        raise DdppError(f"--method must be one of: {', '.join(METHODS)} (got '{method}').")
    preset = dict(METHOD_PRESETS[method])
    if method == "dm" and ipc >= DM_LARGE_IPC:
        preset["lr_img"] = 10.0  # DM's README: lr_img 1 up to IPC 50, 10 from IPC 100
    if method in ("dc", "dsa") and ipc in LOOPS:
        preset["outer_loop"], preset["inner_loop"] = LOOPS[ipc]
    return preset


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


def resume_config(
    folder: Path, given: DistillConfig | Mapping[str, Any] | None = None
) -> DistillConfig:
    """The config that continues the run in ``folder``: the one rule of ``--resume``.

    ``given`` is either a whole config (the run restarted with the same settings; its ``zca``,
    ``train_subset`` and ``val_size`` left None mean "as the run resolved them"), or the
    settings the user gave explicitly (None values are ignored; every other setting comes from
    the checkpoint), or None (continue as saved). Only :data:`CHANGEABLE_ON_RESUME` may differ
    from the checkpoint's config; DdppError names any other difference, and refuses
    ``iterations`` below those already done.
    """
    previous = saved_config(folder)
    method = given.method if isinstance(given, DistillConfig) else (given or {}).get("method")
    if method is not None and method != previous.method:
        raise DdppError(
            f"the run in {folder} was made with other settings (method: {previous.method} → "
            f"{method}); resume it with --method {previous.method}, or start a new run with "
            "another --out."
        )
    if isinstance(given, DistillConfig):
        kept = {k: getattr(previous, k) for k in RESOLVED_AT_START if getattr(given, k) is None}
        config = replace(given, **kept)
    else:
        config = replace(previous, **{k: v for k, v in (given or {}).items() if v is not None})
    if config.identity() != previous.identity():
        raise DdppError(
            f"the run in {folder} was made with other settings "
            f"({store.describe_difference(previous.identity(), config.identity())}); resume "
            "without changing them, or start a new run with another --out."
        )
    done = store.read_metadata(Path(folder) / CHECKPOINT_NAME).get("iteration", 0)
    if config.iterations < int(done):
        raise DdppError(
            f"the run in {folder} has already done {done} iterations; "
            f"--iterations {config.iterations} is fewer."
        )
    return config


@dataclass(frozen=True)
class Resolved:
    """The config a run uses, where each value came from, and whether it resumes."""

    config: DistillConfig
    # field -> "preset", "resume" or "user" (missing: the default); derived step sizes are
    # reported by the run itself (DistillStarted.derived)
    origin: dict[str, str]
    resumed: bool


def resolve(
    given: Mapping[str, Any], folder: Path | None, *, resume: bool = False, derive: bool = False
) -> Resolved:
    """Preset, then saved run, then given options: the settings of the run in ``folder``.

    ``given`` maps DistillConfig field names to the options the user set (None = not given). A
    folder holding a checkpoint continues its saved config (:func:`resume_config` says what may
    change); otherwise the run starts from the preset of its dataset and IPC. ``resume`` True
    means the user asked to resume, so ``folder`` must hold a checkpoint. ``batch_syn``
    :data:`ALL_IMAGES` means every image each step. ``derive`` (``--auto-lr``) leaves a paper
    row's step sizes open for the run to derive (a resumed run keeps the ones it has).
    ``given["method"]`` picks the method (default tm; a resumed run keeps its own); a given
    setting that does not apply to it is refused (:func:`check_options`).
    """
    given = {name: value for name, value in given.items() if value is not None}
    all_images = given.get("batch_syn") == ALL_IMAGES
    if all_images:
        given["batch_syn"] = None
    resumed = folder is not None and (Path(folder) / CHECKPOINT_NAME).is_file()
    if resumed:
        method = given.get("method", saved_config(folder).method)
        check_options(method, [*given, *(["auto_lr"] if derive else [])])
        config = resume_config(folder, given)  # a None (all images) is not applied here...
        if all_images:  # ...but checked like any other change
            config = resume_config(folder, replace(config, batch_syn=None))
        origin = {name: "resume" for name in asdict(config)}
    elif resume:
        raise DdppError(f"{folder} holds no {CHECKPOINT_NAME}; it is not a run to resume.")
    else:
        if given.get("dataset") is None or given.get("ipc") is None:
            raise DdppError("--dataset and --ipc are needed to start a run (or --resume RUN).")
        method = given.get("method", "tm")
        check_options(method, [*given, *(["auto_lr"] if derive else [])])
        rest = {k: v for k, v in given.items() if k not in ("dataset", "ipc", "method")}
        config = DistillConfig.from_preset(
            given["dataset"], given["ipc"], derive=derive, method=method, **rest
        )
        preset = method_preset(method, config.dataset, config.ipc, derive=derive)
        origin = {name: "preset" for name in preset}
        if method == "tm":
            origin.update({name: "preset" for name in presets.KEYS})
        for name in ("outer_loop", "inner_loop"):
            if name in preset:
                origin[name] = "derived"
    if all_images:
        config = replace(config, batch_syn=None)
    origin.update({name: "user" for name in given})
    return Resolved(config, origin, resumed)
