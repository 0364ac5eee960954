"""The settings of a distillation run: :class:`DistillConfig`, checked against its method's
record (``distill.methods``), and each method's preset (:func:`method_preset`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ddpp_cli.engine import augment, data, models, presets
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.distill.methods import (
    DEFAULT_METHOD,
    MethodInfo,
    get_method,
    list_methods,
    method_settings,
)
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.model_selection import DEFAULT_SELECTION, get_selection
from ddpp_cli.engine.student import AMP_MODES
from ddpp_cli.engine.unroll import UNROLL_MODES

INITS = ("real", "noise")
# The registered methods (tm: trajectory matching, MTT with DDPP's pruning; dc/dsa: gradient
# matching without/with Siamese DSA; dm: distribution matching; cafe: CAFE; docs/methods.md).
METHODS = list_methods()
# The settings that apply to some methods only (option name = field name; "buffer" and
# "auto_lr" are options of the command, not fields), from the methods' records. Any other
# setting applies to every method.
METHOD_SETTINGS = method_settings()
# A setting that does not apply to the config's method holds this value (None where not listed).
DEFAULT_UNROLL_BUDGET = 2048  # MiB of kept step graphs in --unroll memory (docs/performance.md)
_UNSET = {
    "unroll": "graph", "unroll_budget": DEFAULT_UNROLL_BUDGET, "amp": "off", "compile": False,
    "channels_last": False,
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


@dataclass(frozen=True)
class DistillConfig:
    """Everything that determines a distillation run (docs/distill.md); see :meth:`from_preset`.

    ``method`` is one of :data:`METHODS` (the registry, ``distill.methods``); a setting that
    does not apply to it
    (:data:`METHOD_SETTINGS`) must stay None (or, for tm's execution options, at its default):
    build another method's config with :meth:`from_preset` or :meth:`with_method`, never by
    replacing ``method`` in a tm config (refused, naming the first tm setting it holds).

    ``zca`` and ``train_subset`` None mean "as the buffer was made" (``zca`` None for a method
    without buffer that whitens, kip: the dataset's default); ``val_size`` None means
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
    method: str = DEFAULT_METHOD
    selection: str = DEFAULT_SELECTION  # engine/model_selection.py: validation or best-test
    # The other methods' settings (METHOD_SETTINGS; None where the method has none).
    image_size: int | None = None  # None: the dataset's own
    channels: int | None = None  # None: the dataset's (an image folder's: from its images)
    batch_real: int | None = None
    lr_net: float | None = None
    outer_loop: int | None = None
    inner_loop: int | None = None
    max_image_steps: int | None = None
    max_inner_epochs: int | None = None
    # kip (docs/methods.md, KIP): the kernel's ensemble of random networks and their width, the
    # KRR's regulariser, whether the label vectors are learned, and their Adam lr.
    ensemble: int | None = None
    kernel_width: int | None = None
    krr_reg: float | None = None
    learn_labels: bool | None = None
    lr_labels: float | None = None  # kip's Adam lr, or tm's with --labels learned (DATM's lr_y)
    # tm (docs/distill.md, Labels (DATM)): hard labels, an expert's logits, or those learned;
    # DATM's difficulty-aligned window of start epochs and its skip rule (None: off).
    labels: str | None = None
    min_start_epoch: int | None = None
    max_start_from: int | None = None
    expansion_end: int | None = None
    skip_threshold: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", data.info(self.dataset).name)
        models.check_known(self.arch)
        if self.ipc < 1:
            raise DdppError(f"--ipc must be at least 1 (got {self.ipc}).")
        info = get_method(self.method)  # DdppError listing the methods
        self._check_method_settings()
        for name, value in info.unset.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self._check_method(info)
        _at_least("iterations", self.iterations, 1)
        for name in ("eval_runs", "eval_epochs", "checkpoint_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("eval_every", "test_runs", "snapshot_every", "unroll_budget"):
            _at_least(name, getattr(self, name), 0)
        for name in ("batch_syn", "train_subset"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        self._check_selection()
        if self.val_size is not None:
            _at_least("val_size", self.val_size, 0)
            if self.val_size == 0 and self.eval_every > 0 and self.selection == DEFAULT_SELECTION:
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

    def _check_selection(self) -> None:
        """The selection rule: best-test tests every ``eval_every`` iterations on the test split
        and holds out no validation images (``val_size`` None becomes 0)."""
        rule = get_selection(self.selection)  # DdppError listing the choices
        if rule.holds_out_validation:
            return
        if self.eval_every == 0:
            raise DdppError(
                f"--selection {rule.name} tests every --eval-every iterations; give --eval-every "
                "1 or more (or use --selection validation)."
            )
        if self.val_size:
            raise DdppError(
                f"--selection {rule.name} holds out no validation split; drop --val-size."
            )
        object.__setattr__(self, "val_size", 0)

    def _check_method_settings(self) -> None:
        """DdppError naming the first setting given that does not apply to the method."""
        for name, methods in METHOD_SETTINGS.items():
            if self.method in methods or not hasattr(self, name):
                continue
            if getattr(self, name) != _UNSET.get(name):
                raise not_applicable(name, self.method)

    def _check_method(self, info: MethodInfo) -> None:
        """The method's own settings: ZCA where it has none, its checks, what it needs."""
        if self.zca and not info.allows_zca:
            allowed = ", ".join(m for m in METHODS if get_method(m).allows_zca)
            raise DdppError(
                f"--method {self.method} distills normalised images (as its reference does); "
                f"ZCA is only available with --method {allowed}. Drop --zca."
            )
        info.check(self)
        for name in info.needed:
            if getattr(self, name) is None:
                raise DdppError(f"{_flag(name)} is needed for --method {self.method}.")
            if name != "lr_net":
                _at_least(name, getattr(self, name), 1)
        if self.inner_loop is not None:
            _at_least("inner_loop", self.inner_loop, 0)
        if self.image_size is not None:
            _at_least("image_size", self.image_size, 1)
        data.check_channels(self.dataset, self.channels)

    @property
    def matching_dsa(self) -> str:
        """The augmentation of the method's matching and inner training (its record's
        ``matching_dsa``: DSA for tm, dsa and dm; none for dc and cafe, as their references).
        Evaluation always uses ``dsa_strategy``."""
        return self.dsa_strategy if get_method(self.method).matching_dsa else augment.NONE

    @classmethod
    def from_preset(
        cls,
        dataset: str,
        ipc: int,
        *,
        derive: bool = False,
        method: str = DEFAULT_METHOD,
        **values: Any,
    ) -> DistillConfig:
        """A config with the preset of ``method`` for ``dataset``/``ipc`` where ``values`` has
        None (the method's record: docs/distill.md's table for tm, the papers' defaults for the
        others).

        tm: the preset's ZCA choice only picks the default buffer; the buffer's own
        preprocessing decides (``zca`` stays None unless given). ``lr_teacher`` and ``lr_lr``
        stay None (derived when the run starts, engine/autolr.py) for datasets without a paper
        row, and on a paper row too with ``derive`` (``--auto-lr``).
        """
        given = {k: v for k, v in values.items() if v is not None}
        preset = method_preset(method, dataset, ipc, derive=derive)
        preset.update(presets.datm_values(dataset, ipc, given.get("labels"), derive=derive))
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
        """ZCA as given, else as the preset says (which default buffer to use)."""
        if self.zca is not None:
            return self.zca
        return bool(presets.resolve(self.dataset, self.ipc)["zca"])

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint: all but
        :data:`CHANGEABLE_ON_RESUME`, which do not touch the images' trajectory."""
        settings = asdict(self)
        for name in CHANGEABLE_ON_RESUME:
            del settings[name]
        if self.channels is None:
            del settings["channels"]  # as recorded before --channels existed
        if self.selection == DEFAULT_SELECTION:
            del settings["selection"]  # likewise, before --selection existed
        for name, default in ADDED_TO_TM.items():  # likewise, before --labels and DATM's window
            if name in settings and settings[name] == default:
                del settings[name]
        for name, methods in METHOD_SETTINGS.items():  # another method's unset settings: so that
            if settings.get(name, 0) is None and self.method not in methods:  # a method added
                del settings[name]  # later leaves the identity of every other run as it was
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
    return get_method(config.method).lighter_unroll(config)


# tm's settings added after its runs had identities, at the values that change nothing.
ADDED_TO_TM = {
    "labels": "hard", "lr_labels": None, "min_start_epoch": None,
    "max_start_from": None, "expansion_end": None, "skip_threshold": None,
}  # fmt: skip

# Settings every method has but whose preset differs by method.
METHOD_PRESET_FIELDS = ("lr_img", "iterations", "init")


def method_preset(method: str, dataset: str, ipc: int, *, derive: bool = False) -> dict[str, Any]:
    """The preset values of ``method`` for ``dataset``/``ipc`` that a config takes (tm's ZCA
    only picks the default buffer: the buffer decides); ``derive``: ``--auto-lr``."""
    info = get_method(method)
    preset = info.preset(dataset, ipc, derive)
    return {name: value for name, value in preset.items() if name not in info.preset_only}


def _at_least(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DdppError(f"{_flag(name)} must be an integer ≥ {minimum} (got {value}).")
