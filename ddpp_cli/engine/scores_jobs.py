"""Where the scores' evaluations come from: for one set file (``ddpp evaluate --scores``,
``ddpp run --scores``) and for the rows of a finished comparison (``ddpp run --compare …
--scores``), which reuse the rows' results and records and train only what is missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ddpp_cli.engine import baselines, distilled, layout
from ddpp_cli.engine.compare.rows import row_budgets
from ddpp_cli.engine.compare.table import RowResult
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.evaluate import EvalConfig, EvalResult
from ddpp_cli.engine.events import OnEvent
from ddpp_cli.engine.pipeline import RunPlan
from ddpp_cli.engine.scores_gather import Measured, ScoreJob, ScoresRequest, SetScores, score_set

SCORES_DIRNAME = "scores"  # beside the rows: the random baseline's records of the scores


@dataclass(frozen=True)
class Where:
    """Data and compute of the scores' evaluations."""

    data_root: Path | None = None
    download: bool = True
    device: torch.device | str = "cpu"
    parallel: int = 1
    on_event: OnEvent | None = None


def _set_zca(distilled_set: DistilledSet, zca_path: Path | None) -> Path | None:
    if distilled_set.preprocessing.get("kind") != "zca":
        return None
    return zca_path or Path(distilled_set.preprocessing["zca_file"])


def full_measured(
    config: baselines.FullConfig, evaluation: EvalConfig, zca_path: Path | None,
    test_subset: int | None, where: Where,
) -> Measured:  # fmt: skip
    """The whole training set from its cache (trained now when runs are missing)."""
    found = baselines.evaluate_full(
        config, evaluation, zca_path=zca_path, test_subset=test_subset,
        data_root=where.data_root, download=where.download, device=where.device,
        on_event=where.on_event, parallel=where.parallel,
    )  # fmt: skip
    subset = "all training images" if config.train_subset is None else (
        f"--train-subset {config.train_subset}"
    )  # fmt: skip
    return Measured(found.result, True, "hard", found.folder, note=f"whole set: {subset}")


def score_set_file(
    distilled_set: DistilledSet, config: EvalConfig, request: ScoresRequest, *,
    records: Path | None, train_subset: int | None = None, test_subset: int | None = None,
    zca_path: Path | None = None, where: Where = Where(),
) -> SetScores:  # fmt: skip
    """The scores of one set: random real images and the whole set drawn from its dataset
    (``train_subset``: a stratified pool), prepared as the set; records in ``records``."""
    zca = _set_zca(distilled_set, zca_path)
    image_size = distilled_set.settings.get("image_size")
    image_size = image_size if isinstance(image_size, int) else None
    random = baselines.BaselineConfig(
        method="random", dataset=distilled_set.dataset, ipc=distilled_set.ipc,
        zca=zca is not None, train_subset=train_subset, image_size=image_size, seed=config.seed,
    )  # fmt: skip
    baseline = baselines.prepare_baseline(
        random, zca_path=zca, test_subset=test_subset, eval_seed=config.seed,
        data_root=where.data_root, download=where.download,
    )  # fmt: skip
    full = baselines.FullConfig(
        dataset=distilled_set.dataset, zca=zca is not None, train_subset=train_subset,
        image_size=image_size, seed=config.seed,
    )  # fmt: skip
    job = ScoreJob(
        config, records, records, baseline,
        lambda: full_measured(full, config, zca, test_subset, where), test_subset,
        where.data_root, where.download, zca_path, where.device, where.parallel, where.on_event,
    )  # fmt: skip
    return score_set(distilled_set, job, request)


def scored_rows(
    plan: RunPlan, rows: Sequence[RowResult], folder: Path, buffer: Path | None,
    request: ScoresRequest, where: Where, budgets: Mapping[str, int] | None = None,
) -> list[RowResult]:  # fmt: skip
    """``rows`` with their scores: every row with a set file (the whole-set row has none),
    its own result and records reused; the random baseline's records in ``folder/compare/scores``;
    the whole set from the ``full`` row when there is one, else its cache (the row's budget)."""
    scores_folder = folder / layout.ROWS_DIRNAME / SCORES_DIRNAME
    zca_file = buffer / layout.ZCA_NAME if plan.buffer.zca and buffer is not None else None
    random = baselines.BaselineConfig(
        method="random", dataset=plan.distill.dataset, ipc=plan.distill.ipc, zca=plan.buffer.zca,
        train_subset=plan.buffer.train_subset, image_size=plan.buffer.image_size,
        seed=plan.evaluation.seed, buffer=buffer, channels=plan.buffer.channels,
    )  # fmt: skip
    scores_folder.mkdir(parents=True, exist_ok=True)
    baseline = baselines.prepare_baseline(
        random, zca_path=zca_file, zca_out=scores_folder / layout.ZCA_NAME,
        test_subset=plan.test_subset, eval_seed=plan.evaluation.seed,
        data_root=where.data_root, download=where.download,
    )  # fmt: skip
    full_row = next((row for row in rows if row.row == "full"), None)
    cached: list[Measured] = []

    def full() -> Measured:
        if full_row is not None:
            return _full_row_measured(full_row.result, full_row.folder)
        if not cached:
            epochs = row_budgets(plan, ("full",), budgets)["full"].value
            evaluation = replace(plan.evaluation, epochs=int(epochs or plan.evaluation.epochs))
            config = baselines.FullConfig(
                dataset=plan.distill.dataset, zca=plan.buffer.zca,
                train_subset=plan.buffer.train_subset, image_size=plan.buffer.image_size,
                channels=plan.buffer.channels, seed=plan.evaluation.seed,
            )  # fmt: skip
            cached.append(full_measured(config, evaluation, zca_file, plan.test_subset, where))
        return cached[0]

    scored = []
    for row in rows:
        if row.set_path is None:
            scored.append(row)
            continue
        job = ScoreJob(
            plan.evaluation, row.folder / layout.RECORDS_DIRNAME, scores_folder, baseline, full,
            plan.test_subset, where.data_root, where.download, None, where.device,
            where.parallel, where.on_event, label=f"{row.row}: ",
        )  # fmt: skip
        found = score_set(distilled.load(row.set_path), job, request)
        scored.append(replace(row, scores=found.to_json()))
    return scored


def _full_row_measured(result: EvalResult, folder: Path) -> Measured:
    epochs = result.protocol.get("epochs")
    return Measured(
        result, True, "hard", Path(result.protocol.get("cache") or folder),
        source="the comparison's full row",
        note=f"whole set: the full row ({epochs} epochs, its budget)",
    )  # fmt: skip
