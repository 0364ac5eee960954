"""The run folder and its files (docs/formats.md, "Distill run folder"): the current set,
the checkpoint, ``metrics.jsonl``, the best set, the image snapshots and the summary."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import torch

from ddpp_cli.engine import layout, store
from ddpp_cli.engine.distill.config import DistillConfig
from ddpp_cli.engine.distill.methods import DEFAULT_METHOD, get_method
from ddpp_cli.engine.distill.state import StateDict
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.distilled import save as save_set
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate.protocol import EvalResult
from ddpp_cli.engine.evaluate.records import check_result_json
from ddpp_cli.engine.layout import (
    BEST_NAME,
    CHECKPOINT_NAME,
    DISTILLED_NAME,
    METRICS_NAME,
    SNAPSHOTS_DIRNAME,
)
from ddpp_cli.engine.layout import DISTILL_SUMMARY_NAME as SUMMARY_NAME
from ddpp_cli.engine.model_selection import DEFAULT_SELECTION, get_selection

# (images, lr, iteration) -> the distilled-set file's content for this run.
SetMaker = Callable[..., DistilledSet]  # (images, lr, iteration[, targets])
Method = TypeVar("Method", bound=Callable[..., Any])
# The metrics line key of a --selection best-test evaluation's whole result (EvalResult JSON).
TEST_RESULT_KEY = "test_result"


def _writing(method: Method) -> Method:
    """A method that writes to the folder: skipped (returning None) by a folder that does not
    write (every rank of a torchrun job but rank 0); when it raises (not on Ctrl-C) the folder's
    ``write_failed`` is set: after a failed write ddpp writes nothing more, and the files
    already there stay as they were."""

    @functools.wraps(method)
    def run(self: RunFolder, *args: Any, **kwargs: Any) -> Any:
        if not self.writes:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception:
            self.write_failed = True
            raise

    return run  # type: ignore[return-value]


# What else ddpp puts in a run folder: ``ddpp run``'s summary and pictures, ``ddpp visualize``'s
# default grids, ``ddpp evaluate``'s records.
RUN_EXTRAS = (
    layout.RUN_SUMMARY_NAME, layout.GRID_NAME, layout.CURVES_NAME, "distilled-grid.png",
    "best-grid.png", layout.RECORDS_DIRNAME,
)  # fmt: skip


def default_run_dir(config: DistillConfig, now: datetime | None = None) -> Path:
    """``<data home>/runs/<dataset>-ipc<K>-eps<E>-<timestamp>`` (a method without pruning:
    ``…-ipc<K>-<method>-<timestamp>``)."""
    variant = config.method if config.eps is None else f"eps{config.eps:g}"
    return layout.default_runs_folder(f"{config.dataset}-ipc{config.ipc}-{variant}", now)


def check_startable(folder: Path) -> None:
    """DdppError when a new run cannot start in ``folder``: it holds files of a run but no
    checkpoint to resume from, or files that are not a run's (never mixed into)."""
    folder = Path(folder)
    if folder.is_dir() and any(
        (folder / name).exists() for name in (DISTILLED_NAME, METRICS_NAME, BEST_NAME)
    ):
        raise DdppError(
            f"{folder} holds files of a run but no {CHECKPOINT_NAME} to resume from; use an "
            "empty --out."
        )
    layout.check_output_folder(folder, {SNAPSHOTS_DIRNAME, SUMMARY_NAME, *RUN_EXTRAS}, "ddpp run")


_CHECKPOINT_REMEDY = "it was not written by this ddpp; start a new run with another --out"
# The checkpoint's metadata: the state's (StateDict.meta) and the run's (RunFolder.run_meta).
_CHECKPOINT_KEYS: dict[str, store.Check] = {
    "iteration": store.COUNT,
    "expert_position": store.COUNT,
    "experts": store.optional(store.INTS),
    "best_iteration": store.optional(store.COUNT),
    "best_val_accuracy": store.optional(store.NUMBER),
    "elapsed_seconds": store.optional(store.NUMBER),
    "config": store.OBJECT,
    "method": store.TEXT,
    "buffer": store.optional(store.TEXT),
    "buffer_config": store.optional(store.OBJECT),
    "dataset": store.TEXT,
    "arch": store.TEXT,
    "seed": store.optional(store.INT),
}


# The check of each DistillConfig field's value in the checkpoint's ``config``, by its type.
_FIELD_CHECKS: dict[str, store.Check] = {
    "str": store.TEXT,
    "int": store.INT,
    "bool": store.FLAG,
    "float": store.NUMBER,
}
_CONFIG_KEYS: dict[str, store.Check] = {
    f.name: (
        store.optional(_FIELD_CHECKS[str(f.type).removesuffix(" | None")])
        if str(f.type).endswith(" | None")
        else _FIELD_CHECKS[str(f.type)]
    )
    for f in dataclasses.fields(DistillConfig)
}
_CONFIG_NEEDED = tuple(
    f.name for f in dataclasses.fields(DistillConfig) if f.default is dataclasses.MISSING
)


def check_checkpoint_metadata(
    path: Path, meta: dict[str, Any], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``meta`` (the metadata of the checkpoint at ``path``) when each key it holds has its
    type (each setting of its ``config`` too) and it holds the ``required`` keys; else a
    one-line DdppError naming the file and the key."""
    store.check_keys(
        path, meta, _CHECKPOINT_KEYS, what="checkpoint", remedy=_CHECKPOINT_REMEDY,
        required=required,
    )  # fmt: skip
    store.check_keys(
        path, meta.get("config") or {}, _CONFIG_KEYS, what="checkpoint",
        remedy=_CHECKPOINT_REMEDY, prefix="config.",
    )  # fmt: skip
    return meta


def saved_settings(path: Path) -> dict[str, Any]:
    """The ``config`` of the checkpoint at ``path``, checked to be a whole config of this ddpp
    (every setting it holds known and typed, the needed ones present)."""
    config = checkpoint_metadata(path).get("config")
    if config is None:
        raise DdppError(f"{path} holds no readable config; it was not written by this ddpp.")
    for key in [*sorted(set(config) - set(_CONFIG_KEYS)), *_CONFIG_NEEDED]:
        if key not in _CONFIG_KEYS:
            problem = "is not a setting of this ddpp"
        elif key not in config:
            problem = "is missing"
        else:
            continue
        raise store.unusable(path, "checkpoint", f"config.{key}", problem, _CHECKPOINT_REMEDY)
    return config


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The checked metadata of the checkpoint at ``path`` (:func:`check_checkpoint_metadata`)."""
    return check_checkpoint_metadata(Path(path), store.read_metadata(path))


# The keys of an earlier summary.json that a finishing run reads (whether it tested the same end).
_SUMMARY_KEYS: dict[str, store.Check] = {
    "iterations": store.COUNT,
    "best_iteration": store.optional(store.COUNT),
}


# Adam's state of the images and learned labels (a method whose record names Adam: kip).
_ADAM_TENSORS = tuple(
    f"adam_{leaf}_{key}"
    for leaf in ("images", "targets")
    for key in ("step", "exp_avg", "exp_avg_sq")
)


def read_checkpoint(path: Path) -> tuple[StateDict, dict[str, Any]]:
    """The saved state of the checkpoint at ``path`` and its whole metadata (DdppError when
    a tensor is missing or has the wrong number of dimensions, or a metadata key is missing
    or wrongly typed)."""
    stored = store.read(path, store.CHECKPOINT_FORMAT)
    meta = check_checkpoint_metadata(
        Path(path), stored.metadata, required=("iteration", "expert_position")
    )
    tensors = {"images": store.require_tensor(stored, "images", ndim=4)}
    config = meta.get("config") or {}
    info = get_method(config.get("method", DEFAULT_METHOD))
    learned = ("lr",) if info.learns_step_size else ()
    experts = ("expert_order",) if info.needs_buffer else ()
    for name in (*learned, *experts, *(f"rng_{g}" for g in info.generators)):
        tensors[name] = store.require_tensor(stored, name, ndim=1)
    if config.get("learn_labels") or config.get("labels") == "learned":  # learned label vectors
        tensors["targets"] = store.require_tensor(stored, "targets", ndim=2)
    for name in ("momentum_images", "momentum_lr", "momentum_targets", *_ADAM_TENSORS):
        if name in stored.tensors:
            tensors[name] = stored.tensors[name]
    state_meta = {
        "iteration": meta["iteration"],
        "expert_position": meta["expert_position"],
        "experts": list(meta.get("experts") or []),
        "best_iteration": meta.get("best_iteration"),
        "best_val_accuracy": meta.get("best_val_accuracy"),
        "elapsed_seconds": meta.get("elapsed_seconds"),
    }
    return StateDict(tensors, state_meta), meta


class RunFolder:
    """Writes and trims the files of one run folder.

    ``as_set`` makes a set file's content from (images, lr, iteration); ``run_tensors`` and
    ``run_meta`` are what every checkpoint holds besides the state (labels, config, buffer,
    layout). ``saved_iteration`` is the iteration of the checkpoint on disk (None before the
    first); ``write_failed`` becomes True when a write of this folder raised.
    With ``writes=False`` (the ranks of a torchrun job other than rank 0) every
    writing method does nothing (``save_set`` still returns its path); reading works.
    """

    def __init__(
        self,
        folder: Path,
        as_set: SetMaker,
        run_tensors: dict[str, torch.Tensor],
        run_meta: dict[str, Any],
        *,
        writes: bool = True,
    ) -> None:
        self.folder = folder
        self.distilled = folder / DISTILLED_NAME
        self.checkpoint = folder / CHECKPOINT_NAME
        self.metrics = folder / METRICS_NAME
        self.best = folder / BEST_NAME
        self.summary = folder / SUMMARY_NAME
        self.as_set = as_set
        self.run_tensors = run_tensors
        self.run_meta = run_meta
        self.writes = writes
        self.rule = get_selection(
            (run_meta.get("config") or {}).get("selection", DEFAULT_SELECTION)
        )
        self.saved_iteration: int | None = None
        self.write_failed = False
        self.metrics_unsynced = False

    @_writing
    def create(self) -> None:
        """Make the folder; drop temporaries a killed write left behind."""
        self.folder.mkdir(parents=True, exist_ok=True)
        store.remove_stale_temporaries(self.folder)

    # -- set files --------------------------------------------------------------------------

    def save_set(self, path: Path, saved: StateDict, extra: dict[str, Any] | None = None) -> Path:
        if not self.writes:
            return path
        learned = {} if saved.targets is None else {"targets": saved.targets}
        distilled = self.as_set(saved.images, saved.lr, saved.iteration, **learned)
        return save_set(path, distilled, {"iteration": saved.iteration, **(extra or {})})

    @_writing
    def save_checkpoint(self, saved: StateDict) -> None:
        """``distilled.safetensors`` and ``checkpoint.safetensors`` of the state ``saved``."""
        self.sync_metrics()
        self.save_set(self.distilled, saved)
        tensors = {**saved.tensors, **self.run_tensors}
        store.write(self.checkpoint, tensors, store.CHECKPOINT_FORMAT, self.checkpoint_meta(saved))
        self.saved_iteration = saved.iteration

    def checkpoint_meta(self, saved: StateDict) -> dict[str, Any]:
        return {"config": self.run_meta["config"], **saved.meta, **self.run_meta}

    @_writing
    def save_best(self, saved: StateDict, accuracy: float, std: float | None) -> Path:
        """The best set; only after the checkpoint of the same iteration (never newer). Its
        metadata names the split it was chosen on (``val_*``, or ``test_*`` and the selection
        label with ``--selection best-test``)."""
        rule = self.rule
        extra = {rule.accuracy_key: accuracy, rule.std_key: std}
        if rule.name != DEFAULT_SELECTION:
            extra["selection"] = rule.label
        return self.save_set(self.best, saved, extra)

    def restore_best(self, saved: StateDict) -> None:
        """Write the best set from the checkpoint ``saved`` when the run stopped between the
        checkpoint of a new best and the best set (which then holds an older iteration)."""
        if saved.meta.get("best_iteration") != saved.iteration:
            return
        if self.best.is_file() and (
            store.read_metadata(self.best).get("iteration") == saved.iteration
        ):
            return
        line = next(
            (r for r in self.metrics_records() if r.get("iteration") == saved.iteration), {}
        )
        std = line.get(self.rule.std_key)
        self.save_best(
            saved, saved.meta["best_val_accuracy"], std if store.is_number(std) else None
        )

    @_writing
    def save_diverged(self, saved: StateDict, iteration: int) -> Path:
        """The last good set as ``distilled.safetensors``, marked with the iteration that
        diverged (the checkpoint stays at the last saved one)."""
        return self.save_set(self.distilled, saved, {"diverged_at": iteration})

    # -- image snapshots (--snapshot-every) -------------------------------------------------

    def snapshot_path(self, iteration: int) -> Path:
        """Where ``--snapshot-every`` keeps the images of ``iteration`` (for ``--animate``)."""
        return self.folder / SNAPSHOTS_DIRNAME / f"iter_{iteration:06d}.safetensors"

    @_writing
    def save_image_snapshot(self, images: torch.Tensor, lr: float | None, iteration: int) -> Path:
        """The images of ``iteration`` as a set file under ``snapshots/`` (``ddpp.distilled/1``)."""
        path = self.snapshot_path(iteration)
        path.parent.mkdir(exist_ok=True)
        return save_set(path, self.as_set(images, lr, iteration), {"iteration": iteration})

    # -- metrics.jsonl ----------------------------------------------------------------------

    @_writing
    def log(self, record: dict[str, Any]) -> None:
        """Append one line (made durable by :meth:`sync_metrics` before the next checkpoint)."""
        with open(self.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.metrics_unsynced = True

    @_writing
    def sync_metrics(self) -> None:
        """fsync the lines appended since the last sync, so that a checkpoint written after this
        is never ahead of ``metrics.jsonl`` on disk, whatever stops the machine."""
        if not self.metrics_unsynced:
            return
        with open(self.metrics, "a", encoding="utf-8") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        self.metrics_unsynced = False

    def metrics_records(self) -> list[dict[str, Any]]:
        """The readable lines of ``metrics.jsonl`` (a torn or foreign line is skipped; a value
        of the wrong type is ignored by each reader)."""
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def best_test_result(self, iteration: int) -> EvalResult | None:
        """The whole test result that ``--selection best-test`` logged at ``iteration``, its
        ``seconds`` those of the line (the iteration, its test included); None when there is
        none or it is unreadable."""
        for record in self.metrics_records():
            logged = record.get(TEST_RESULT_KEY)
            if record.get("iteration") == iteration and isinstance(logged, dict):
                seconds = record.get("seconds")
                try:
                    return EvalResult.from_json(
                        {**logged, "seconds": seconds if store.is_number(seconds) else 0.0}
                    )
                except (TypeError, ValueError):  # a foreign or damaged line: test again
                    return None
        return None

    def pruned_stats(self) -> dict[str, float]:
        """Min, max and mean of the pruned fraction over ``metrics.jsonl`` (empty if none)."""
        values = [
            float(r["pruned_fraction"])
            for r in self.metrics_records()
            if store.is_number(r.get("pruned_fraction"))
        ]
        if not values:
            return {}
        return {"min": min(values), "max": max(values), "mean": sum(values) / len(values)}

    # -- resume -----------------------------------------------------------------------------

    @_writing
    def truncate(self, iteration: int) -> None:
        """Forget what came after the checkpoint of ``iteration``: the redone iterations'
        metrics lines and image snapshots."""
        self.truncate_metrics(iteration)
        self.truncate_snapshots(iteration)

    @_writing
    def truncate_metrics(self, iteration: int) -> None:
        """Keep only the lines of iterations ≤ ``iteration`` (none at 0, whose line is redone);
        a torn last line is dropped too."""
        if not self.metrics.is_file():
            return
        kept = []
        for record in self.metrics_records():
            number = record.get("iteration")
            if isinstance(number, int) and 0 <= number <= iteration and iteration > 0:
                kept.append(json.dumps(record) + "\n")
        store.atomic_write_text(self.metrics, "".join(kept))

    @_writing
    def truncate_snapshots(self, iteration: int) -> None:
        """Drop image snapshots of iterations after ``iteration`` (redone after a resume)."""
        for path in sorted((self.folder / SNAPSHOTS_DIRNAME).glob("iter_*.safetensors")):
            number = path.stem.removeprefix("iter_")
            if number.isdigit() and int(number) > iteration:
                path.unlink()

    def previous_summary(self) -> dict[str, Any] | None:
        """``summary.json`` of an earlier finish of this run, if readable."""
        if not self.summary.is_file():
            return None
        try:
            previous = json.loads(self.summary.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(previous, dict):
            return None
        remedy = "delete it to test the set again"
        store.check_keys(self.summary, previous, _SUMMARY_KEYS, what="run summary", remedy=remedy)
        if previous.get("test") is not None:
            check_result_json(
                self.summary, "test", previous["test"], what="run summary", remedy=remedy
            )
        return previous

    @_writing
    def write_summary(self, summary: dict[str, Any]) -> None:
        store.atomic_write_text(self.summary, json.dumps(summary, indent=2) + "\n")
