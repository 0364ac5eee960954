"""``ddpp run``: buffer → distill → evaluate (with the random baseline) → visualize, in one go.

A :class:`RunPlan` fixes every stage's settings from a profile (:data:`PROFILES`) plus the
user's overrides; :func:`run_pipeline` carries it out and returns a :class:`RunSummary`.

- ``paper``: the paper's settings as they stand, the config dataclasses' defaults (100 experts ×
  50 epochs on the full data, the preset, 5000 iterations with validation, 5 evaluation runs ×
  1000 epochs; docs/distill.md, docs/evaluation.md).
- ``quick``: the same algorithm on a budget a 2-core CPU finishes in minutes for an MNIST-sized
  set at IPC 1 (one expert on a 5000-image subset, 60 iterations, 3 × 300-epoch evaluation
  runs on a 2000-image test subset); the settings table says what was cut.

An existing buffer is reused when it fits (same dataset, architecture and preprocessing, long
enough experts, enough of them); otherwise the profile's buffer folder is trained, or resumed.
The random-real baseline is evaluated under exactly the distilled set's protocol (same
architecture, epochs, seeds and test images), so the two accuracies can be compared directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ddpp_cli import __version__
from ddpp_cli.engine import allocator, baselines, data, distilled, evaluate, layout, presets, store
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import visualize as visualize_engine
from ddpp_cli.engine.buffer.reuse import check_finished
from ddpp_cli.engine.distill.validation import check_ipc, validation_size
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import OnEvent

PROFILES = ("quick", "paper")
STAGES = ("buffer", "distill", "evaluate", "baseline", "visualize")
SUMMARY_FORMAT = "ddpp.run/1"

# The budget of the quick profile (every value overridable from the command line); the paper
# profile's values are the config dataclasses' defaults.
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

# ``ddpp run`` options that override a stage's setting, by the name used in :func:`plan_run`.
DISTILL_KEYS = (
    "iterations", "syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "lr_img",
    "lr_lr", "lr_teacher", "init", "eval_every", "eval_runs", "eval_epochs", "checkpoint_every",
    "val_size", "unroll", "unroll_budget", "selection", "labels", "lr_labels",
)  # fmt: skip
OVERRIDE_KEYS = (
    *DISTILL_KEYS, "experts", "buffer_epochs", "train_subset", "zca", "image_size", "runs",
    "epochs", "test_subset", "channels",
)  # fmt: skip


@dataclass(frozen=True)
class RunPlan:
    """Every stage's settings for one ``ddpp run``."""

    profile: str
    buffer: buffer_engine.BufferConfig
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
    DistillConfig names, ``experts``/``buffer_epochs``/``train_subset``/``zca``/``image_size``/
    ``channels`` for the buffer (and so for the whole run),
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
    preset = presets.resolve(info.name, ipc)
    use_zca = bool(given.get("zca", preset["zca"]))
    origin: dict[str, str] = {"dataset": "user", "ipc": "user", "test_runs": "run"}
    quick = profile == "quick"
    distill_config = _plan_distill(
        info.name, ipc, eps, arch, seed, use_zca, quick, given, origin, derive=auto_lr
    )
    buffer_config = _plan_buffer(distill_config, quick, given, origin)
    profile_values = _profile_values(("runs", "epochs"), quick, given)
    evaluation = evaluate.EvalConfig(arch=arch, seed=seed, **profile_values)
    test_subset = given.get("test_subset", QUICK["test_subset"] if quick else None)
    for name in ("runs", "epochs", "test_subset"):
        origin[name] = "user" if name in given else ("profile" if quick else "default")
    return RunPlan(profile, buffer_config, distill_config, evaluation, test_subset, origin)


def _plan_distill(
    dataset: str, ipc: int, eps: float, arch: str, seed: int, use_zca: bool, quick: bool,
    given: dict[str, Any], origin: dict[str, str], *, derive: bool = False,
) -> distill_engine.DistillConfig:  # fmt: skip
    """The distillation settings, resolved as ``ddpp distill`` resolves them: the preset, the
    quick profile's cuts, then the options (``origin`` is told where the profile's and the
    options' values came from); ``derive`` is ``--auto-lr``."""
    profile = _quick_distill_profile(use_zca) if quick else {}
    options = {k: given[k] for k in DISTILL_KEYS if k in given}
    # The run evaluates the set itself (with the baseline), so the distiller's own test is off.
    resolved = distill_engine.resolve(
        {
            "dataset": dataset, "ipc": ipc, "eps": eps, "arch": arch, "seed": seed,
            "zca": use_zca, "test_runs": 0, "train_subset": given.get("train_subset"), **options,
        },
        None, derive=derive, profile=profile,
    )  # fmt: skip
    chosen = (*profile, *options)  # and DATM's preset (--labels teacher|learned), named as such
    origin.update(
        {k: v for k, v in resolved.origin.items() if k in chosen or v == presets.DATM_ORIGIN}
    )
    return resolved.config


def _quick_distill_profile(use_zca: bool) -> dict[str, Any]:
    """The quick profile's distillation values: caps of the preset's unroll, a short run
    without validation and, on normalised data, larger image steps."""
    profile: dict[str, Any] = {
        "syn_steps": lambda preset: min(preset, QUICK["syn_steps"]),
        "max_start_epoch": lambda preset: min(preset, QUICK["max_start_epoch"]),
        "iterations": QUICK["iterations"],
        "eval_every": QUICK["eval_every"],
        "checkpoint_every": QUICK["checkpoint_every"],
    }
    if not use_zca:
        profile["lr_img"] = lambda preset: max(preset, QUICK["lr_img"])
    return profile


def _plan_buffer(
    distill_config: distill_engine.DistillConfig, quick: bool, given: dict[str, Any],
    origin: dict[str, str],
) -> buffer_engine.BufferConfig:  # fmt: skip
    """The buffer settings: experts long enough for ``distill_config``, the profile's count and
    subsets, then the options (``origin`` is told where each came from)."""
    needed = distill_config.needed_epochs
    paper = buffer_engine.BufferConfig(distill_config.dataset)  # the paper's buffer: the defaults
    buffer_epochs = given.get("buffer_epochs", needed if quick else max(paper.epochs, needed))
    if buffer_epochs < needed:
        raise DdppError(
            f"--buffer-epochs {buffer_epochs} is too short: --max-start-epoch "
            f"{distill_config.max_start_epoch} with --expert-epochs "
            f"{distill_config.expert_epochs} needs experts of {needed} epochs."
        )
    config = buffer_engine.BufferConfig(
        dataset=distill_config.dataset,
        arch=distill_config.arch,
        experts=given.get("experts", QUICK["experts"] if quick else paper.experts),
        epochs=buffer_epochs,
        zca=distill_config.zca,
        train_subset=given.get("train_subset", QUICK["buffer_train_subset"] if quick else None),
        test_subset=QUICK["buffer_test_subset"] if quick else None,
        image_size=given.get("image_size"),
        seed=distill_config.seed,
        channels=given.get("channels"),
    )
    for name in ("experts", "buffer_epochs", "train_subset"):
        origin[name] = "user" if name in given else ("profile" if quick else "default")
    return config


def _profile_values(names: tuple[str, ...], quick: bool, given: dict[str, Any]) -> dict[str, Any]:
    """The settings ``names`` as given, else the quick profile's; the paper profile leaves the
    rest to the config dataclass's defaults."""
    values = {name: QUICK[name] for name in names} if quick else {}
    return {**values, **{name: given[name] for name in names if name in given}}


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


class _StageClock:
    """Announces each stage of STAGES (StageStarted, numbered by its place there), times it from
    then on and announces its end (StageFinished); ``seconds`` keeps each stage's time."""

    def __init__(self, emit: OnEvent) -> None:
        self.emit = emit
        self.seconds: dict[str, float] = {}
        self._stage = ""
        self._started = 0.0

    def start(self, stage: str, detail: str) -> None:
        self._stage, self._started = stage, time.perf_counter()
        self.emit(StageStarted(stage, STAGES.index(stage) + 1, len(STAGES), detail))

    def finish(self, detail: str) -> None:
        self.seconds[self._stage] = time.perf_counter() - self._started
        self.emit(StageFinished(self._stage, self.seconds[self._stage], detail))


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
            "selection": self.evaluation.selection,
            "labels": self.evaluation.protocol["label_text"],  # what its networks trained with
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
    on_event: OnEvent | None = None,
    world: World | None = None,
) -> RunSummary:
    """Carry out ``plan``: make or reuse the buffer, distill into ``folder`` (resumed when it
    holds a checkpoint), evaluate the set and the random baseline, draw the grid and curves,
    and write ``run.json`` there. ``parallel`` networks are trained at once in the buffer and
    evaluation stages (``--parallel``). Engine events of every stage are passed to ``on_event``.
    Under torchrun (``world``) the ranks split the experts, each distillation minibatch and the
    evaluation runs; rank 0 picks the folders and alone writes the pictures and ``run.json``."""
    emit = on_event or (lambda event: None)
    world = world or World()
    allocator.keep_for_process()  # a process that distils keeps freed memory throughout
    folder = world.from_main(Path(folder) if folder is not None else default_run_folder(plan))
    if not (folder / layout.CHECKPOINT_NAME).is_file():
        distill_engine.files.check_startable(folder)  # before hours of buffer training
        check_inputs(plan, buffer, data_root=data_root, download=download)
    stages = _StageClock(emit)
    data_folder = data.source_folder(plan.distill.dataset, data_root)
    emit(RunStarted(plan, folder, data_folder))
    sources = {"data_root": data_root, "download": download}
    run = {"device": device, "parallel": parallel, "on_event": on_event, "world": world}

    buffer_dir, reused = _buffer_stage(plan, buffer, stages, emit, sources, run, data_folder)

    stages.start("distill", str(folder))
    distill_summary = distill_engine.distill(
        plan.distill,
        folder,
        buffer=buffer_dir,
        device=device,
        on_event=on_event,
        world=world,
        **sources,
    )
    stages.finish(str(folder))

    set_path = evaluate.find_set(folder)
    distilled_set = distilled.load(set_path)
    stages.start("evaluate", str(set_path))
    records = folder / layout.RECORDS_DIRNAME  # every finished network kept: a rerun resumes
    evaluation = evaluate.evaluate_set(
        distilled_set, plan.evaluation, test_subset=plan.test_subset, records=records,
        **sources, **run,
    )  # fmt: skip
    stages.finish(f"{evaluation.mean_std_text()} %")

    baseline = _baseline_stage(plan, buffer_dir, stages, sources, {**run, "records": records})
    grid, curves = _pictures_stage(
        distilled_set, folder, stages, draw=world.is_main, final_test=evaluation.mean
    )

    summary = RunSummary(
        folder=folder, plan=plan, data_folder=data_folder, buffer=buffer_dir,
        buffer_reused=reused, distill=distill_summary, set_path=set_path,
        evaluation=evaluation, baseline=baseline, grid=grid, curves=curves,
        summary=folder / layout.RUN_SUMMARY_NAME, seconds=stages.seconds,
    )  # fmt: skip
    if world.is_main:
        write_summary(summary)
    return summary


def write_summary(summary: RunSummary, extra: dict[str, Any] | None = None) -> None:
    """``run.json``: the summary's JSON plus ``extra`` (``--scores``: ``{"scores": …}``)."""
    content = summary.to_json() | (extra or {})
    store.atomic_write_text(summary.summary, json.dumps(content, indent=2) + "\n")


def check_inputs(
    plan: RunPlan, buffer: Path | None = None, *, data_root: Path | None = None,
    download: bool = True,
) -> None:  # fmt: skip
    """DdppError, before the first expensive stage, for inputs that cannot work together: a
    ``--buffer`` whose training was stopped, a subset larger than the data or smaller than its
    classes, a validation split that leaves no training images, or an IPC above what the
    smallest class keeps once the subset and the validation split are taken (as the
    distillation will find it, hours later)."""
    train_subset = plan.distill.train_subset or plan.buffer.train_subset
    if buffer is not None and (Path(buffer) / layout.MANIFEST_NAME).is_file():
        manifest = buffer_engine.read_manifest(buffer)
        check_finished(manifest, Path(buffer))
        train_subset = plan.distill.train_subset or manifest.train_subset
    train = data.load(
        plan.distill.dataset, data_root, "train", download=download,
        image_size=plan.buffer.image_size, seed=plan.buffer.seed, channels=plan.buffer.channels,
    )  # fmt: skip
    counts = data.class_counts(train).tolist()
    if train_subset is not None:
        if train_subset > len(train):
            raise DdppError(
                f"--train-subset {train_subset} is more than the {len(train)} training images "
                f"of {plan.distill.dataset}; give at most {len(train)}, or drop it."
            )
        if train_subset < len(counts):
            raise DdppError(
                f"--train-subset {train_subset} cannot cover the {len(counts)} classes of "
                f"{plan.distill.dataset}: give --train-subset {len(counts)} or more."
            )
        counts = data.proportional_quota(counts, train_subset)
    held = validation_size(plan.distill, sum(counts), len(counts))
    if held >= sum(counts):
        raise DdppError(
            f"--val-size {held} leaves no training images of the {sum(counts)}; give a smaller "
            "--val-size."
        )
    held_out = data.proportional_quota(counts, held) if held else [0] * len(counts)
    kept = [count - out for count, out in zip(counts, held_out, strict=True)]
    check_ipc(plan.distill.ipc, kept, train.class_names, held)  # as the distillation will


def choose_buffer(
    plan: RunPlan, buffer: Path | None, emit: OnEvent, source: Path | None = None,
    world: World | None = None,
) -> tuple[Path, bool]:  # fmt: skip
    """The buffer a run distills from, and whether it is reused (else it is to be trained), as
    :func:`~ddpp_cli.engine.buffer.reuse.choose_buffer` finds it for the plan and its profile."""
    quick = plan.profile == "quick"
    subsets = (QUICK["buffer_train_subset"], QUICK["buffer_test_subset"]) if quick else (None, None)
    return buffer_engine.choose_buffer(
        plan.buffer, plan.distill.needed_epochs, buffer, profile=plan.profile, subsets=subsets,
        emit=emit, source=source, world=world,
    )  # fmt: skip


def _buffer_stage(
    plan: RunPlan, buffer: Path | None, stages: _StageClock, emit: OnEvent,
    sources: dict[str, Any], run: dict[str, Any], source: Path | None = None,
) -> tuple[Path, bool]:  # fmt: skip
    """Stage 1: the buffer to distill from (:func:`choose_buffer`), trained when none is reused,
    and whether it was reused."""
    buffer_dir, reused = choose_buffer(plan, buffer, emit, source, run.get("world"))
    if reused:
        stages.start("buffer", f"reusing {buffer_dir}")
    else:
        stages.start("buffer", f"training into {buffer_dir}")
        buffer_engine.train_buffer(plan.buffer, buffer_dir, **sources, **run)
    stages.finish(str(buffer_dir))
    return buffer_dir, reused


def _baseline_stage(
    plan: RunPlan, buffer_dir: Path, stages: _StageClock, sources: dict[str, Any],
    run: dict[str, Any],
) -> evaluate.EvalResult:  # fmt: skip
    """Stage 4: the random-real baseline under the set's protocol and test images."""
    stages.start("baseline", f"random real images, IPC {plan.distill.ipc}")
    zca_file = buffer_dir / layout.ZCA_NAME if plan.buffer.zca else None
    prepared = baselines.prepare_baseline(
        baselines.BaselineConfig(
            method="random", dataset=plan.distill.dataset, ipc=plan.distill.ipc,
            zca=plan.buffer.zca, image_size=plan.buffer.image_size, seed=plan.evaluation.seed,
            channels=plan.buffer.channels,
        ),
        zca_path=zca_file, test_subset=plan.test_subset, eval_seed=plan.evaluation.seed,
        **sources,
    )  # fmt: skip
    baseline, _ = baselines.evaluate_baseline(prepared, plan.evaluation, **run)
    stages.finish(f"{baseline.mean_std_text()} %")
    return baseline


def _pictures_stage(
    distilled_set: distilled.DistilledSet, folder: Path, stages: _StageClock, *, draw: bool,
    final_test: float,
) -> tuple[Path, Path]:  # fmt: skip
    """Stage 5: the class grid and the curves, in the run folder (drawn by one rank: ``draw``;
    a run that never validated shows the set's test accuracy, ``final_test``, instead)."""
    stages.start("visualize", str(folder))
    grid, curves = folder / layout.GRID_NAME, folder / layout.CURVES_NAME
    if draw:
        upsample = 2 if distilled_set.images.shape[-1] < 64 else 1
        visualize_engine.save_image(
            visualize_engine.class_grid(distilled_set, upsample=upsample), grid
        )
        metrics = visualize_engine.read_metrics(folder)
        image = visualize_engine.curves_image(
            metrics, title=f"ddpp run {folder.name}", final_test=final_test,
            labels=visualize_engine.set_labels(distilled_set),
        )  # fmt: skip
        visualize_engine.save_image(image, curves)
    stages.finish(str(grid))
    return grid, curves
