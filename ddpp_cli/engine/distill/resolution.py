"""The one rule for a run's settings: preset, then profile, then saved run, then given options
(:func:`resolve`), with each value's origin, and what a resumed run may change
(:func:`resume_config`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ddpp_cli.engine import presets, store
from ddpp_cli.engine.distill.config import METHOD_SETTINGS, DistillConfig, not_applicable
from ddpp_cli.engine.distill.files import checkpoint_metadata, saved_settings
from ddpp_cli.engine.distill.methods import DEFAULT_METHOD, get_method
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.layout import CHECKPOINT_NAME

# Settings a run resolves when it starts (from the buffer and the data) where the config has None.
RESOLVED_AT_START = ("zca", "train_subset", "val_size", *presets.DERIVED)
ALL_IMAGES = 0  # batch_syn as given on the command line for "every image each step" (None here)
# A profile's value of a setting: the value, or a function of the preset's value (e.g. a cap).
ProfileValue = Any | Callable[[Any], Any]


def check_options(method: str, names: Iterable[str]) -> None:
    """DdppError naming the first option of ``names`` (field or option names, e.g. ``buffer``,
    ``auto_lr``) that does not apply to ``method``."""
    get_method(method)  # DdppError listing the methods
    for name in names:
        key = "buffer" if name == "buffer_dir" else name
        if key in METHOD_SETTINGS and method not in METHOD_SETTINGS[key]:
            raise not_applicable(key, method)


def saved_config(folder: Path) -> DistillConfig:
    """The config stored in the checkpoint of run folder ``folder`` (for ``--resume``)."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        raise DdppError(f"{folder} holds no {CHECKPOINT_NAME}; it is not a run to resume.")
    return DistillConfig(**saved_settings(path))


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
    for name in ("method", "selection", "labels"):  # checked first: each decides other checks
        value = (
            getattr(given, name) if isinstance(given, DistillConfig) else (given or {}).get(name)
        )
        if value is not None and value != getattr(previous, name):
            raise DdppError(
                f"the run in {folder} was made with other settings ({name}: "
                f"{getattr(previous, name)} → {value}); resume it with --{name} "
                f"{getattr(previous, name)}, or start a new run with another --out."
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
    done = checkpoint_metadata(Path(folder) / CHECKPOINT_NAME).get("iteration", 0)
    if config.iterations < done:
        raise DdppError(
            f"the run in {folder} has already done {done} iterations; "
            f"--iterations {config.iterations} is fewer."
        )
    return config


@dataclass(frozen=True)
class Resolved:
    """The config a run uses, where each value came from, and whether it resumes."""

    config: DistillConfig
    # field -> "preset", "derived" (from the IPC), "profile", "resume" or "user" (missing: the
    # default); derived step sizes are reported by the run itself (DistillStarted.derived)
    origin: dict[str, str]
    resumed: bool


def resolve(
    given: Mapping[str, Any],
    folder: Path | None,
    *,
    resume: bool = False,
    derive: bool = False,
    profile: Mapping[str, ProfileValue] | None = None,
) -> Resolved:
    """Preset, then profile, then saved run, then given options: the settings of the run in
    ``folder``, read from the method's preset once.

    ``given`` maps DistillConfig field names to the options the user set (None = not given). A
    folder holding a checkpoint continues its saved config (:func:`resume_config` says what may
    change); otherwise the run starts from the preset of its dataset and IPC. ``resume`` True
    means the user asked to resume, so ``folder`` must hold a checkpoint. ``batch_syn``
    :data:`ALL_IMAGES` means every image each step. ``derive`` (``--auto-lr``) leaves a paper
    row's step sizes open for the run to derive (a resumed run keeps the ones it has).
    ``given["method"]`` picks the method (default tm; a resumed run keeps its own); a given
    setting that does not apply to it is refused (:func:`check_options`). ``profile`` (e.g.
    ``ddpp run``'s quick profile) maps field names to values between the preset and ``given``
    (origin "profile"): a value, or a function of the preset's value; a resumed run keeps its
    saved settings instead.
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
        method = given.get("method", DEFAULT_METHOD)
        check_options(method, [*given, *(["auto_lr"] if derive else [])])
        info = get_method(method)
        preset = info.preset(given["dataset"], given["ipc"], derive)
        # tm with --labels teacher|learned: DATM's configs where they cover the dataset
        datm = presets.datm_values(
            given["dataset"], given["ipc"], given.get("labels"), derive=derive
        )
        preset.update(datm)
        chosen = {**preset, **_profile_values(profile or {}, preset)}
        values = {k: v for k, v in chosen.items() if k not in info.preset_only}
        rest = {
            k: v
            for k, v in given.items()
            if k not in ("dataset", "ipc", "method") and v is not None  # None: all images
        }
        config = DistillConfig(
            dataset=given["dataset"], ipc=given["ipc"], method=method, **{**values, **rest}
        )
        origin = {name: "preset" for name in preset}
        origin.update({name: presets.DATM_ORIGIN for name in datm})
        origin.update({name: "derived" for name in info.derived if name in preset})
        origin.update({name: "profile" for name in profile or {}})
    if all_images:
        config = replace(config, batch_syn=None)
    origin.update({name: "user" for name in given})
    return Resolved(config, origin, resumed)


def _profile_values(
    profile: Mapping[str, ProfileValue], preset: Mapping[str, Any]
) -> dict[str, Any]:
    """The profile's values, its functions applied to the preset's values."""
    return {
        name: value(preset.get(name)) if callable(value) else value
        for name, value in profile.items()
    }
