"""One rule for the settings of a distillation run: preset, then saved run, then given options.

A new run takes SPEC §6's preset for its dataset and IPC and the options given on top. A run
folder that holds a checkpoint takes the config saved there and the options given on top; the
options may change only what :data:`distill.CHANGEABLE_ON_RESUME` lists (how long it runs, how
often it validates, how it executes), never the images' trajectory. ``batch_syn`` 0 means every
image each step (``None`` in :class:`DistillConfig`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ddpp_cli.engine import presets, store
from ddpp_cli.engine.distill import CHECKPOINT_NAME, DistillConfig, saved_config
from ddpp_cli.engine.errors import DdppError

ALL_IMAGES = 0  # batch_syn as given for "every image each step"


@dataclass(frozen=True)
class Resolved:
    """The config a run uses, where each value came from, and whether it resumes."""

    config: DistillConfig
    origin: dict[str, str]  # field -> "preset", "resume" or "option" (missing: the default)
    resumed: bool


def resolve(given: dict[str, Any], folder: Path | None, *, resume: bool = False) -> Resolved:
    """Merge the options ``given`` (DistillConfig field names; None = not given) with a saved run
    in ``folder`` (when it holds a checkpoint) or with the preset.

    ``resume`` True means the user asked to resume, so ``folder`` must hold a checkpoint.
    Raises DdppError for a conflict with the saved run or a missing dataset/IPC.
    """
    given = {name: value for name, value in given.items() if value is not None}
    all_images = given.get("batch_syn") == ALL_IMAGES
    if all_images:
        del given["batch_syn"]
    resumed = folder is not None and (Path(folder) / CHECKPOINT_NAME).is_file()
    if resumed:
        saved = saved_config(folder)
        config = replace(saved, **given)
        origin = {name: "resume" for name in asdict(saved)}
        check_resumable(config, saved, folder)
    elif resume:
        raise DdppError(f"{folder} holds no {CHECKPOINT_NAME}; it is not a run to resume.")
    else:
        if given.get("dataset") is None or given.get("ipc") is None:
            raise DdppError("--dataset and --ipc are needed to start a run (or --resume RUN).")
        rest = {k: v for k, v in given.items() if k not in ("dataset", "ipc")}
        config = DistillConfig.from_preset(given["dataset"], given["ipc"], **rest)
        origin = {name: "preset" for name in presets.KEYS}
    if all_images:
        config = replace(config, batch_syn=None)
        given["batch_syn"] = None
    origin.update({name: "option" for name in given})
    return Resolved(config, origin, resumed)


def check_resumable(config: DistillConfig, saved: DistillConfig, folder: Path) -> None:
    """DdppError unless ``config`` may continue the run saved in ``folder`` as ``saved``.

    Values the buffer resolved (``zca``, ``train_subset``, ``val_size``) compare as resolved;
    None means "as before".
    """
    filled = {
        k: getattr(saved, k)
        for k in ("zca", "train_subset", "val_size")
        if getattr(config, k) is None
    }
    config = replace(config, **filled)
    if config.identity() != saved.identity():
        raise DdppError(
            f"the run in {folder} was made with other settings "
            f"({store.describe_difference(saved.identity(), config.identity())}); resume "
            "without changing them, or start a new run with another --out."
        )
    done = int(store.read_metadata(Path(folder) / CHECKPOINT_NAME).get("iteration", 0))
    if config.iterations < done:
        raise DdppError(
            f"the run in {folder} has already done {done} iterations; "
            f"--iterations {config.iterations} is fewer."
        )
