"""Making and evaluating one row of ``ddpp run --compare``: :class:`RowJob` (what a runner
gets), the runners by kind (:data:`RUNNERS`), and :func:`row_settings`, what a saved row must
share with this one to be reused."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import baselines, coresets, distilled, evaluate
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine.compare.events import EvaluationStarted
from ddpp_cli.engine.compare.rows import ROWS, Budget, row_config
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.layout import RECORDS_DIRNAME, ZCA_NAME
from ddpp_cli.engine.layout import ROW_RUN_DIRNAME as RUN_DIRNAME
from ddpp_cli.engine.layout import ROW_SET_NAME as SET_NAME
from ddpp_cli.engine.pipeline import RunPlan


@dataclass(frozen=True)
class RowJob:
    """What a row runner gets: the row, the plan, the row's budget and folder, the run's buffer
    (None when no trajectory row asked for one) and where the data and the work are."""

    row: str
    plan: RunPlan
    budget: Budget
    folder: Path
    buffer: Path | None
    data_root: Path | None = None
    download: bool = True
    device: torch.device | str = "cpu"
    parallel: int = 1
    on_event: OnEvent | None = None

    @property
    def records(self) -> Path:
        """Where the row's evaluation keeps its finished runs."""
        return self.folder / RECORDS_DIRNAME

    @property
    def sources(self) -> dict[str, Any]:
        return {"data_root": self.data_root, "download": self.download}

    @property
    def run(self) -> dict[str, Any]:
        return {"device": self.device, "parallel": self.parallel, "on_event": self.on_event}

    def evaluating(self) -> None:
        """Announce the evaluation (after the set is made)."""
        if self.on_event is not None:
            self.on_event(EvaluationStarted(self.row))


# A row runner makes the row's set in ``job.folder`` (resuming what a killed attempt left) and
# evaluates it under the plan's protocol: the result and the set file.
RowRunner = Callable[[RowJob], tuple[evaluate.EvalResult, Path | None]]


def coreset_config(job: RowJob) -> baselines.BaselineConfig:
    """The BaselineConfig of a coreset row: the run's data and seed, the run's buffer (herding's
    expert features, forgetting's data; None without a trajectory row) and, for forgetting (both
    rows), the row's budget as its epochs."""
    plan = job.plan
    coreset = coresets.get_coreset(job.row)
    method, variant = coreset.method, dict(coreset.preset)
    budget = {coreset.budget_option: job.budget.value} if coreset.budget_option else {}
    # The coresets are drawn from the data the buffer was trained on (the quick profile's
    # subset), which also keeps forgetting's training within its CPU budget.
    return baselines.BaselineConfig(
        method=method, dataset=plan.distill.dataset, ipc=plan.distill.ipc, zca=plan.buffer.zca,
        train_subset=plan.buffer.train_subset, image_size=plan.buffer.image_size,
        seed=plan.evaluation.seed, buffer=job.buffer, channels=plan.buffer.channels, **budget,
        **variant,
    )  # fmt: skip


def run_coreset_row(job: RowJob) -> tuple[evaluate.EvalResult, Path | None]:
    """A coreset row: select, evaluate (run 0's coreset is saved as the row's set)."""
    plan = job.plan
    zca_file = None
    if plan.buffer.zca and job.buffer is not None:
        zca_file = job.buffer / ZCA_NAME
    prepared = baselines.prepare_baseline(
        coreset_config(job), zca_path=zca_file, zca_out=job.folder / ZCA_NAME,
        test_subset=plan.test_subset, eval_seed=plan.evaluation.seed, **job.sources,
    )  # fmt: skip
    job.evaluating()
    result, coreset = baselines.evaluate_baseline(
        prepared, plan.evaluation, records=job.records, **job.run
    )
    return result, distilled.save(job.folder / SET_NAME, coreset)


def run_distilled_row(job: RowJob) -> tuple[evaluate.EvalResult, Path | None]:
    """A trajectory or matching row: distill into ``ROW/run`` (resumed from its checkpoint),
    then evaluate its set (best.safetensors, else distilled.safetensors)."""
    plan, row, iterations = job.plan, job.row, int(job.budget.value or 0)
    folder = job.folder / RUN_DIRNAME
    config = row_config(plan, row, iterations)
    buffer = job.buffer if ROWS[row].needs_buffer else None
    distill_engine.distill(
        config, folder, buffer=buffer, device=job.device, on_event=job.on_event, **job.sources
    )
    set_path = evaluate.find_set(folder)
    job.evaluating()
    result = evaluate.evaluate_set(
        distilled.load(set_path), plan.evaluation, test_subset=plan.test_subset,
        records=job.records, **job.sources, **job.run,
    )  # fmt: skip
    return result, set_path


def full_config(job: RowJob) -> baselines.FullConfig:
    """The data of the whole-set row: those the coresets draw from (the buffer's training
    subset, image size, channels, ZCA or not), the run's seed."""
    plan = job.plan
    return baselines.FullConfig(
        dataset=plan.distill.dataset, zca=plan.buffer.zca, train_subset=plan.buffer.train_subset,
        image_size=plan.buffer.image_size, channels=plan.buffer.channels, seed=plan.evaluation.seed,
    )  # fmt: skip


def run_full_row(job: RowJob) -> tuple[evaluate.EvalResult, Path | None]:
    """The whole-set row: the row's budget as the protocol's epochs; its runs go to (and are
    taken from) the whole-set cache in the data home, which its result's protocol names
    (``cache``), so another comparison or the scores reuse them. No set file."""
    plan = job.plan
    zca_file = job.buffer / ZCA_NAME if plan.buffer.zca and job.buffer is not None else None
    config = replace(plan.evaluation, epochs=int(job.budget.value or plan.evaluation.epochs))
    job.evaluating()
    found = baselines.evaluate_full(
        full_config(job), config, zca_path=zca_file, test_subset=plan.test_subset,
        **job.sources, **job.run,
    )  # fmt: skip
    return found.result, None


RUNNERS: dict[str, RowRunner] = {
    "coreset": run_coreset_row,
    "matching": run_distilled_row,
    "trajectory": run_distilled_row,
    "full": run_full_row,
}


def row_settings(job: RowJob) -> dict[str, Any]:
    """What a saved row must share with this one to be reused (JSON-normal)."""
    plan, info = job.plan, ROWS[job.row]
    settings: dict[str, Any] = {
        "row": job.row,
        "dataset": plan.distill.dataset,
        "ipc": plan.distill.ipc,
        "arch": plan.distill.arch,
        "seed": plan.distill.seed,
        "zca": plan.buffer.zca,
        "image_size": plan.buffer.image_size,
        "budget": job.budget.value,
        "evaluation": asdict(plan.evaluation),
        "test_subset": plan.test_subset,
    }
    if settings["evaluation"]["labels"] == "set":  # the default: rows saved before it match
        del settings["evaluation"]["labels"]
    if info.method is not None:  # the whole config, so the profile's cuts are compared too
        config = row_config(plan, job.row, int(job.budget.value or 0))
        settings |= {"distill": config.identity()}
        if info.needs_buffer:
            settings["buffer"] = str(job.buffer)
    else:
        buffer = None if job.buffer is None else str(job.buffer)
        settings |= {"train_subset": plan.buffer.train_subset, "buffer": buffer}
    return json.loads(json.dumps(settings))
