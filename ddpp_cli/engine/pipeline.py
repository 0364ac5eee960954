"""``ddpp run``: buffer → distill → evaluate (with the random baseline) → visualize, in one go.

A :class:`RunPlan` fixes every stage's settings from a profile (:data:`PROFILES`) plus the
user's overrides; :func:`run_pipeline` carries it out and returns a :class:`RunSummary`.

- ``paper``: SPEC §5–§7 as they stand (100 experts × 50 epochs on the full data, the §6 preset,
  5000 iterations with validation, 5 evaluation runs × 1000 epochs).
- ``quick``: the same algorithm on a budget a 2-core CPU finishes in minutes for an MNIST-sized
  set at IPC 1 (one expert on a 5000-image subset, 60 iterations, 3 × 300-epoch evaluation
  runs on a 2000-image test subset); the settings table says what was cut.

An existing buffer is reused when it fits (same dataset, architecture and preprocessing, long
enough experts, enough of them); otherwise the profile's buffer folder is trained, or resumed.
The random-real baseline is evaluated under exactly the distilled set's protocol (same
architecture, epochs, seeds and test images), so the two accuracies can be compared directly.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import platformdirs
import torch

from ddpp_cli import __version__
from ddpp_cli.engine import baselines, data, distilled, evaluate, presets, store, trajectory
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import visualize as visualize_engine
from ddpp_cli.engine.errors import DdppError

PROFILES = ("quick", "paper")
STAGES = ("buffer", "distill", "evaluate", "baseline", "visualize")
SUMMARY_NAME = "run.json"
SUMMARY_FORMAT = "ddpp.run/1"
GRID_NAME = "grid.png"
CURVES_NAME = "curves.png"

EventCallback = Callable[[object], None]

# The budget of the quick profile (every value overridable from the command line).
QUICK = {
    "experts": 1,
    "buffer_train_subset": 5000,
    "buffer_test_subset": 1000,
    "syn_steps": 20,  # at most; a smaller preset value is kept
    "max_start_epoch": 3,  # at most
    "lr_img": 1000.0,  # short runs need larger image steps; normalised data only (not ZCA)
    "iterations": 60,
    "eval_every": 0,
    "checkpoint_every": 20,
    "runs": 3,
    "epochs": 300,
    "test_subset": 2000,
}
# The paper's evaluation (SPEC §7) and buffer size (SPEC §5).
PAPER = {"experts": 100, "buffer_epochs": 50, "runs": 5, "epochs": 1000}

# ``ddpp run`` options that override a stage's setting, by the name used in :func:`plan_run`.
DISTILL_KEYS = (
    "iterations", "syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "lr_img",
    "lr_lr", "lr_teacher", "init", "eval_every", "eval_runs", "eval_epochs", "checkpoint_every",
    "val_size",
)  # fmt: skip
OVERRIDE_KEYS = (
    *DISTILL_KEYS, "experts", "buffer_epochs", "train_subset", "zca", "image_size", "runs",
    "epochs", "test_subset",
)  # fmt: skip


@dataclass(frozen=True)
class RunPlan:
    """Every stage's settings for one ``ddpp run``."""

    profile: str
    buffer: trajectory.BufferConfig
    distill: distill_engine.DistillConfig
    evaluation: evaluate.EvalConfig
    test_subset: int | None
    origin: dict[str, str]  # setting -> "profile" | "preset" | "user" | "default"

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "buffer": asdict(self.buffer),
            "distill": asdict(self.distill),
            "evaluation": asdict(self.evaluation),
            "test_subset": self.test_subset,
            "origin": self.origin,
        }


def plan_run(
    dataset: str,
    ipc: int,
    *,
    eps: float = 0.1,
    profile: str = "paper",
    arch: str = "convnet",
    seed: int = 0,
    auto_lr: bool = False,
    **overrides: Any,
) -> RunPlan:
    """The settings of every stage: ``profile``'s, then ``overrides`` (None = not given).

    Override names are those of :data:`OVERRIDE_KEYS`: the distillation settings by their
    DistillConfig names, ``experts``/``buffer_epochs``/``train_subset``/``zca``/``image_size``
    for the buffer (and so for the whole run),
    ``runs``/``epochs``/``test_subset`` for the evaluation (and the baseline). ``auto_lr``
    derives lr_teacher and lr_lr on a paper row too (see :mod:`ddpp_cli.engine.autolr`).
    """
    if profile not in PROFILES:
        raise DdppError(f"unknown profile '{profile}'; choose one of: {', '.join(PROFILES)}.")
    unknown = set(overrides) - set(OVERRIDE_KEYS)
    if unknown:
        raise TypeError(f"unknown run settings: {', '.join(sorted(unknown))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    info = data.info(dataset)
    preset = presets.resolve(info.name, ipc, derive=auto_lr)
    use_zca = bool(given.get("zca", preset["zca"]))
    origin: dict[str, str] = {"dataset": "user", "ipc": "user", "test_runs": "run"}

    distill_values: dict[str, Any] = {}
    if profile == "quick":
        distill_values = {
            "syn_steps": min(preset["syn_steps"], QUICK["syn_steps"]),
            "max_start_epoch": min(preset["max_start_epoch"], QUICK["max_start_epoch"]),
            "iterations": QUICK["iterations"],
            "eval_every": QUICK["eval_every"],
            "checkpoint_every": QUICK["checkpoint_every"],
        }
        if not use_zca:
            distill_values["lr_img"] = max(preset["lr_img"], QUICK["lr_img"])
        origin.update({name: "profile" for name in distill_values})
    distill_values.update({k: given[k] for k in DISTILL_KEYS if k in given})
    origin.update({k: "user" for k in DISTILL_KEYS if k in given})
    all_images = distill_values.get("batch_syn") == 0  # --batch-syn 0: every image each step
    if all_images:
        del distill_values["batch_syn"]
    # The run evaluates the set itself (with the baseline), so the distiller's own test is off.
    distill_config = distill_engine.DistillConfig.from_preset(
        info.name, ipc, derive=auto_lr, eps=eps, arch=arch, seed=seed, zca=use_zca, test_runs=0,
        train_subset=given.get("train_subset"), **distill_values,
    )  # fmt: skip
    if all_images:
        distill_config = replace(distill_config, batch_syn=None)

    quick = profile == "quick"
    needed = distill_config.needed_epochs
    buffer_epochs = given.get(
        "buffer_epochs", needed if quick else max(PAPER["buffer_epochs"], needed)
    )
    if buffer_epochs < needed:
        raise DdppError(
            f"--buffer-epochs {buffer_epochs} is too short: --max-start-epoch "
            f"{distill_config.max_start_epoch} with --expert-epochs "
            f"{distill_config.expert_epochs} needs experts of {needed} epochs."
        )
    buffer_config = trajectory.BufferConfig(
        dataset=info.name,
        arch=arch,
        experts=given.get("experts", QUICK["experts"] if quick else PAPER["experts"]),
        epochs=buffer_epochs,
        zca=use_zca,
        train_subset=given.get("train_subset", QUICK["buffer_train_subset"] if quick else None),
        test_subset=QUICK["buffer_test_subset"] if quick else None,
        image_size=given.get("image_size"),
        seed=seed,
    )
    for name in ("experts", "buffer_epochs", "train_subset"):
        origin[name] = "user" if name in given else ("profile" if quick else "default")

    evaluation = evaluate.EvalConfig(
        arch=arch,
        runs=given.get("runs", QUICK["runs"] if quick else PAPER["runs"]),
        epochs=given.get("epochs", QUICK["epochs"] if quick else PAPER["epochs"]),
        seed=seed,
    )
    test_subset = given.get("test_subset", QUICK["test_subset"] if quick else None)
    for name in ("runs", "epochs", "test_subset"):
        origin[name] = "user" if name in given else ("profile" if quick else "default")
    return RunPlan(profile, buffer_config, distill_config, evaluation, test_subset, origin)


# ----------------------------------------------------------------------------------- buffers


def buffer_folder(config: trajectory.BufferConfig, profile: str) -> Path:
    """The folder a run trains its buffer into when none fits.

    The paper profile shares ``ddpp buffer``'s default folder; the quick profile has its own
    (``…-quick``); other settings get a folder named after a hash of them, so that different
    settings never meet in one folder.
    """
    base = trajectory.default_buffer_dir(config.dataset, config.arch, config.zca)
    standard = trajectory.BufferConfig(
        dataset=config.dataset, arch=config.arch, epochs=config.epochs, zca=config.zca,
        image_size=config.image_size, seed=config.seed,
    )  # fmt: skip
    quick = replace(
        standard,
        train_subset=QUICK["buffer_train_subset"],
        test_subset=QUICK["buffer_test_subset"],
    )
    identity = config.identity()
    if identity == standard.identity() and config.epochs == PAPER["buffer_epochs"]:
        return base
    if profile == "quick" and identity == quick.identity():
        return base.with_name(f"{base.name}-quick")
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return base.with_name(f"{base.name}-{digest}")


def fits(manifest: dict[str, Any], config: trajectory.BufferConfig, needed_epochs: int) -> bool:
    """Whether a buffer (its manifest) can serve a distillation that ``config`` describes."""
    saved = manifest.get("config") or {}
    kind = (manifest.get("preprocessing") or {}).get("kind")
    dataset = manifest.get("dataset")
    try:
        same_dataset = isinstance(dataset, str) and data.info(dataset).name == config.dataset
    except DdppError:
        return False
    return (
        same_dataset
        and manifest.get("arch") == config.arch
        and (kind == "zca") == config.zca
        and saved.get("image_size") == config.image_size
        and int(manifest.get("epochs", 0)) >= needed_epochs
    )


def find_reusable_buffer(
    config: trajectory.BufferConfig, needed_epochs: int, root: Path | None = None
) -> Path | None:
    """A complete buffer under ``root`` (default: the ddpp buffers folder) that fits ``config``:
    at least ``config.experts`` finished experts. The one with the most experts wins."""
    root = Path(root) if root is not None else platformdirs.user_data_path("ddpp") / "buffers"
    if not root.is_dir():
        return None
    best: tuple[int, str, Path] | None = None
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            manifest = trajectory.read_manifest(folder)
        except DdppError:
            continue
        if not fits(manifest, config, needed_epochs):
            continue
        count = len(trajectory.expert_files(folder))
        if count >= config.experts and (best is None or count > best[0]):
            best = (count, folder.name, folder)
    return None if best is None else best[2]


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class RunStarted:
    plan: RunPlan
    folder: Path
    data_folder: Path  # where the dataset is read from (data.source_folder)


@dataclass(frozen=True)
class StageStarted:
    stage: str  # one of STAGES
    index: int  # 1-based
    total: int
    detail: str


@dataclass(frozen=True)
class StageFinished:
    stage: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class RunSummary:
    folder: Path
    plan: RunPlan
    data_folder: Path
    buffer: Path
    buffer_reused: bool
    distill: distill_engine.DistillSummary
    set_path: Path
    evaluation: evaluate.EvalResult
    baseline: evaluate.EvalResult
    grid: Path
    curves: Path
    summary: Path
    seconds: dict[str, float]

    @property
    def gain(self) -> float:
        """Distilled minus random-baseline mean test accuracy (a fraction, not %)."""
        return self.evaluation.mean - self.baseline.mean

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SUMMARY_FORMAT,
            "ddpp_version": __version__,
            "folder": str(self.folder),
            "data_folder": str(self.data_folder),
            "buffer": str(self.buffer),
            "buffer_reused": self.buffer_reused,
            "set": str(self.set_path),
            "distill": distill_engine.summary_json(self.distill),
            "distilled": self.evaluation.to_json(),
            "random_baseline": self.baseline.to_json(),
            "gain": self.gain,
            "grid": str(self.grid),
            "curves": str(self.curves),
            "seconds": self.seconds,
            "plan": self.plan.to_json(),
        }


def default_run_folder(plan: RunPlan) -> Path:
    """The run folder of ``ddpp distill`` for the plan's settings (timestamped)."""
    return distill_engine.default_run_dir(plan.distill)


def run_pipeline(
    plan: RunPlan,
    folder: Path | None = None,
    *,
    buffer: Path | None = None,
    data_root: Path | None = None,
    download: bool = True,
    device: torch.device | str = "cpu",
    parallel: int = 1,
    on_event: EventCallback | None = None,
) -> RunSummary:
    """Carry out ``plan``: make or reuse the buffer, distill into ``folder`` (resumed when it
    holds a checkpoint), evaluate the set and the random baseline, draw the grid and curves,
    and write ``run.json`` there. ``parallel`` networks are trained at once in the buffer and
    evaluation stages (``--parallel``). Engine events of every stage are passed to ``on_event``."""
    emit = on_event or (lambda event: None)
    folder = Path(folder) if folder is not None else default_run_folder(plan)
    total = len(STAGES)
    seconds: dict[str, float] = {}
    data_folder = data.source_folder(plan.distill.dataset, data_root)
    emit(RunStarted(plan, folder, data_folder))

    # 1. buffer
    started = time.perf_counter()
    needed = plan.distill.needed_epochs
    reused = False
    if buffer is not None and (Path(buffer) / trajectory.MANIFEST_NAME).is_file():
        buffer_dir, reused = Path(buffer), True
    elif buffer is None and (found := find_reusable_buffer(plan.buffer, needed)) is not None:
        buffer_dir, reused = found, True
    else:
        buffer_dir = (
            Path(buffer) if buffer is not None else buffer_folder(plan.buffer, plan.profile)
        )
    if reused:
        emit(StageStarted("buffer", 1, total, f"reusing {buffer_dir}"))
    else:
        emit(StageStarted("buffer", 1, total, f"training into {buffer_dir}"))
        trajectory.train_buffer(
            plan.buffer, buffer_dir, data_root=data_root, download=download, device=device,
            parallel=parallel, on_event=on_event,
        )  # fmt: skip
    seconds["buffer"] = time.perf_counter() - started
    emit(StageFinished("buffer", seconds["buffer"], str(buffer_dir)))

    # 2. distill
    started = time.perf_counter()
    emit(StageStarted("distill", 2, total, str(folder)))
    distill_summary = distill_engine.distill(
        plan.distill, folder, buffer=buffer_dir, data_root=data_root, download=download,
        device=device, on_event=on_event,
    )  # fmt: skip
    seconds["distill"] = time.perf_counter() - started
    emit(StageFinished("distill", seconds["distill"], str(folder)))

    # 3. evaluate the set
    started = time.perf_counter()
    set_path = evaluate.find_set(folder)
    distilled_set = distilled.load(set_path)
    emit(StageStarted("evaluate", 3, total, str(set_path)))
    evaluation = evaluate.evaluate_set(
        distilled_set, plan.evaluation, data_root=data_root, download=download,
        test_subset=plan.test_subset, device=device, parallel=parallel, on_event=on_event,
    )  # fmt: skip
    seconds["evaluate"] = time.perf_counter() - started
    emit(StageFinished("evaluate", seconds["evaluate"], f"{evaluation.mean_std_text()} %"))

    # 4. the random-real baseline, same protocol and test images
    started = time.perf_counter()
    emit(StageStarted("baseline", 4, total, f"random real images, IPC {plan.distill.ipc}"))
    zca_file = buffer_dir / trajectory.ZCA_NAME if plan.buffer.zca else None
    prepared = baselines.prepare_baseline(
        baselines.BaselineConfig(
            method="random", dataset=plan.distill.dataset, ipc=plan.distill.ipc,
            zca=plan.buffer.zca, image_size=plan.buffer.image_size, seed=plan.evaluation.seed,
        ),
        data_root=data_root, download=download, zca_path=zca_file,
        test_subset=plan.test_subset, eval_seed=plan.evaluation.seed,
    )  # fmt: skip
    baseline, _ = baselines.evaluate_baseline(
        prepared, plan.evaluation, device=device, parallel=parallel, on_event=on_event
    )
    seconds["baseline"] = time.perf_counter() - started
    emit(StageFinished("baseline", seconds["baseline"], f"{baseline.mean_std_text()} %"))

    # 5. pictures
    started = time.perf_counter()
    emit(StageStarted("visualize", 5, total, str(folder)))
    grid = visualize_engine.save_image(
        visualize_engine.class_grid(
            distilled_set, upsample=2 if distilled_set.images.shape[-1] < 64 else 1
        ),
        folder / GRID_NAME,
    )
    curves = visualize_engine.save_image(
        visualize_engine.curves_image(
            visualize_engine.read_metrics(folder), title=f"ddpp run {folder.name}"
        ),
        folder / CURVES_NAME,
    )
    seconds["visualize"] = time.perf_counter() - started
    emit(StageFinished("visualize", seconds["visualize"], str(grid)))

    summary = RunSummary(
        folder=folder, plan=plan, data_folder=data_folder, buffer=buffer_dir,
        buffer_reused=reused, distill=distill_summary, set_path=set_path,
        evaluation=evaluation, baseline=baseline, grid=grid, curves=curves,
        summary=folder / SUMMARY_NAME, seconds=seconds,
    )  # fmt: skip
    store.atomic_write_text(summary.summary, json.dumps(summary.to_json(), indent=2) + "\n")
    return summary
