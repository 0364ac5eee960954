"""DD-Ranking's scores (--scores): the formulas on hand-computed values in both conventions, the
random baseline's lr picked on validation or test, the sources of every accuracy, and the
scores of a tiny comparison and of ddpp evaluate."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import compare as compare_engine
from ddpp_cli.engine import pipeline, scores, scores_gather
from ddpp_cli.engine.evaluate import EvalConfig, EvalResult
from ddpp_cli.engine.scores import Accuracies, compute_scores, get_convention
from tests.conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

E, INV_E = 2.718281828459045, 0.36787944117144233  # e and e^-1
DENOMINATOR = E - INV_E  # 2.3504023872876028


def test_the_robust_score_is_0_at_minus_one_and_1_at_one_and_hand_computed_between():
    assert scores.robust_score(-1.0) == pytest.approx(0.0, abs=1e-15)
    assert scores.robust_score(1.0) == pytest.approx(1.0, rel=1e-15)
    # x = 0: (1 - 1/e) / (e - 1/e) = 0.63212055882855767 / 2.3504023872876028
    assert scores.robust_score(0.0) == pytest.approx(0.2689414213699951, rel=1e-12)


ACCURACIES = Accuracies(
    full=[0.90],
    set_labels=[0.70, 0.72],
    set_hard=[0.60, 0.62],
    set_no_dsa=[0.65, 0.66],
    random=[0.50, 0.52],
    random_no_dsa=[0.45, 0.44],
)


def test_ddpp_convention_fractions_of_the_means():
    found = compute_scores(ACCURACIES, get_convention("ddpp"), weight=0.5, gamma=0.5)
    # means: full 0.90, set 0.71, set hard 0.61, no DSA 0.655, random 0.51, random no DSA 0.445
    assert found["hlr"] == pytest.approx(0.29, abs=1e-12)  # 0.90 - 0.61
    assert found["ior"] == pytest.approx(0.20, abs=1e-12)  # 0.71 - 0.51
    # α = 0.5·0.20 − 0.5·0.29 = −0.045; e^−0.045 = 0.95599748183309
    assert found["lrs"] == pytest.approx((0.95599748183309 - INV_E) / DENOMINATOR, rel=1e-12)
    assert found["lrs"] == pytest.approx(0.2502202, abs=1e-7)
    # β = 0.5·(0.71 − 0.51) + 0.5·(0.655 − 0.445) = 0.205; e^0.205 = 1.2275250649
    assert found["ars"] == pytest.approx((1.22752506 - INV_E) / DENOMINATOR, rel=1e-8)


def test_the_weight_moves_lrs_between_ior_and_minus_hlr():
    only_ior = compute_scores(ACCURACIES, get_convention("ddpp"), weight=1.0)
    only_hlr = compute_scores(ACCURACIES, get_convention("ddpp"), weight=0.0)
    assert only_ior["lrs"] == pytest.approx((math.exp(0.20) - INV_E) / DENOMINATOR, rel=1e-12)
    assert only_hlr["lrs"] == pytest.approx((math.exp(-0.29) - INV_E) / DENOMINATOR, rel=1e-12)


def test_ddranking_convention_percent_per_run_then_the_mean():
    found = compute_scores(ACCURACIES, get_convention("ddranking"), weight=0.5, gamma=0.5)
    # run 0: HLR 90 − 60 = 30, IOR 70 − 50 = 20, α = 10 − 15 = −5
    # run 1: HLR 90 − 62 = 28 (one whole-set run: its mean), IOR 72 − 52 = 20, α = 10 − 14 = −4
    assert found["hlr"] == pytest.approx(29.0, abs=1e-9)
    assert found["ior"] == pytest.approx(20.0, abs=1e-9)
    lrs0 = (0.006737946999085467 - INV_E) / DENOMINATOR  # e^-5
    lrs1 = (0.01831563888873418 - INV_E) / DENOMINATOR  # e^-4
    assert found["lrs"] == pytest.approx((lrs0 + lrs1) / 2, rel=1e-12)
    assert found["lrs"] == pytest.approx(-0.1511880, abs=1e-7)  # negative: percent inside exp
    # ARS run 0: β = 0.5·20 + 0.5·(65 − 45) = 20; run 1: 0.5·20 + 0.5·(66 − 44) = 21
    ars = ((math.exp(20) - INV_E) + (math.exp(21) - INV_E)) / 2 / DENOMINATOR
    assert found["ars"] == pytest.approx(ars, rel=1e-12)


def test_the_conventions_are_a_registry_of_two_and_a_wrong_name_is_refused():
    assert list(scores.CONVENTIONS) == ["ddpp", "ddranking"]
    assert get_convention("ddpp").lr_picked_on == "validation"
    assert (get_convention("ddranking").lr_picked_on, get_convention("ddranking").scale) == (
        "test",
        100.0,
    )
    with pytest.raises(Exception, match="--scores-convention must be one of ddpp, ddranking"):
        get_convention("other")
    with pytest.raises(Exception, match="--score-weight must be between 0 and 1"):
        scores_gather.ScoresRequest(weight=1.5)


def test_the_lr_pick_takes_the_best_mean_and_the_smaller_lr_on_a_tie():
    grid = {0.001: [0.2, 0.4], 0.005: [0.5, 0.3], 0.01: [0.4, 0.4], 0.1: [0.1, 0.2]}
    assert scores.pick_lr(grid) == 0.005  # 0.4 ties with 0.01: the first in ascending order
    assert scores.best_per_run(grid) == [0.5, 0.4]


def _fake_result(accuracies: list[float], lr: float) -> EvalResult:
    return EvalResult(
        arch="convnet", accuracies=accuracies, mean=sum(accuracies) / len(accuracies), std=0.0,
        seconds=0.0, lr=lr, protocol={}, reused_runs=[],
    )  # fmt: skip


class _Split:
    def __init__(self, labels):
        self.labels = labels
        self.images = torch.zeros(len(labels), 1, 2, 2)
        self.class_names = ("a", "b")
        self.num_classes = 2

    def __len__(self):
        return len(self.labels)


def _patched_job(monkeypatch):
    """A ScoreJob whose random baseline is evaluated by a fake: on the validation split lr 0.05
    is best, on the test split lr 0.001 for run 0 and 0.1 for run 1."""
    calls = []
    on_validation = {0.001: [0.3, 0.3], 0.005: [0.3, 0.3], 0.01: [0.4, 0.4],
                     0.05: [0.6, 0.5], 0.1: [0.2, 0.2]}  # fmt: skip
    on_test = {0.001: [0.7, 0.1], 0.005: [0.2, 0.2], 0.01: [0.3, 0.3],
               0.05: [0.4, 0.4], 0.1: [0.1, 0.8]}  # fmt: skip

    def fake_evaluate(baseline, config, **kwargs):
        where = "validation" if baseline.validation else "test"
        calls.append((where, config.lr, config.dsa_strategy))
        table = on_validation if where == "validation" else on_test
        return _fake_result(table[config.lr], config.lr), None

    class FakeBaseline:
        validation = False

    def held_out(baseline, seed):
        b = FakeBaseline()
        b.validation = True
        b.test_labels = [0] * 7
        return b

    monkeypatch.setattr(scores_gather.baselines, "evaluate_baseline", fake_evaluate)
    monkeypatch.setattr(scores_gather, "validation_baseline", held_out)
    job = scores_gather.ScoreJob(EvalConfig(runs=2), None, None, FakeBaseline(), lambda: None)
    return job, calls


def test_the_ddpp_convention_picks_the_random_lr_on_validation_then_tests_it_once(monkeypatch):
    job, calls = _patched_job(monkeypatch)
    measured, info = scores_gather.random_accuracy(job.config, job, "validation")
    assert info["lr"] == 0.05 and info["picked_on"] == "validation"
    assert info["grid"]["0.05"] == pytest.approx(0.55)
    assert [c[:2] for c in calls] == [("validation", lr) for lr in scores.LR_GRID] + [
        ("test", 0.05)
    ]
    assert measured.result.accuracies == [0.4, 0.4]  # the test split at lr 0.05


def test_the_ddranking_convention_takes_each_runs_best_test_accuracy(monkeypatch):
    job, calls = _patched_job(monkeypatch)
    measured, info = scores_gather.random_accuracy(job.config, job, "test")
    assert [c[:2] for c in calls] == [("test", lr) for lr in scores.LR_GRID]
    assert measured.result.accuracies == [0.7, 0.8]
    assert info["per_run_lr"] == [0.001, 0.1]
    assert measured.to_json()["lr"] is None  # each run its own


def _pool_baseline(per_class: int, ipc: int = 1):
    from ddpp_cli.engine import baselines, data

    labels = torch.arange(10).repeat_interleave(per_class)
    images = torch.arange(len(labels), dtype=torch.float32).reshape(-1, 1, 1, 1)
    return baselines.Baseline(
        config=baselines.BaselineConfig(method="random", dataset="mnist", ipc=ipc),
        train=data.ImageSplit(images, labels, tuple(str(k) for k in range(10))),
        test_images=torch.zeros(4, 1, 1, 1), test_labels=torch.zeros(4, dtype=torch.long),
        preprocessing=None, preprocessing_info={}, zca_path=None,
    )  # fmt: skip


def test_the_validation_split_is_held_out_of_the_pool_stratified():
    baseline = _pool_baseline(per_class=30)  # 300 images: 10 % is 30, 3 per class
    held_out = scores_gather.validation_baseline(baseline, seed=0)
    assert len(held_out.test_labels) == 30 and len(held_out.train) == 270
    assert torch.bincount(held_out.test_labels, minlength=10).tolist() == [3] * 10
    kept = set(held_out.train.images.flatten().tolist())
    assert kept.isdisjoint(held_out.test_images.flatten().tolist())
    assert kept | set(held_out.test_images.flatten().tolist()) == set(range(300))
    again = scores_gather.validation_baseline(baseline, seed=0)
    assert torch.equal(again.test_images, held_out.test_images)  # drawn from the seed
    assert held_out._cache is not baseline._cache  # its coresets are its own


def test_a_pool_too_small_to_hold_out_a_validation_split_is_refused():
    with pytest.raises(Exception, match="--ipc 2 leaves no random baseline"):
        scores_gather.validation_baseline(_pool_baseline(per_class=2, ipc=2), seed=0)


def _plan():
    return pipeline.plan_run(
        "mnist", 1, profile="quick", image_size=8, train_subset=80, runs=2, epochs=2,
        test_subset=20,
    )  # fmt: skip


def herding_lr(summary, augmentation: str = "dsa") -> str:
    return f"{summary.rows[1].scores['random_lr'][augmentation]['lr']:g}"


@pytest.mark.slow
def test_compare_scores_reuse_the_rows_and_name_every_source(tiny_mnist, tmp_path):
    plan, rows = _plan(), ("random", "herding", "full")
    kwargs = {"budgets": {"full": 1}, "data_root": tiny_mnist, "download": False}
    first = compare_engine.compare(plan, rows, tmp_path / "c", **kwargs)
    assert all(row.scores is None for row in first.rows)
    events = []
    scored = compare_engine.compare(
        plan, rows, tmp_path / "c", scores=scores_gather.ScoresRequest(), on_event=events.append,
        **kwargs,
    )  # fmt: skip
    kinds = scores_gather.ScoreStarted | scores_gather.ScoreFinished
    announced = [(type(e).__name__, e.label) for e in events if isinstance(e, kinds)]
    herding_labels = [label for kind, label in announced[::2] if label.startswith("herding")]
    assert herding_labels == [
        "herding: set", "herding: set_hard", "herding: set_no_dsa",
        *(f"herding: random lr {lr:g} (validation)" for lr in scores.LR_GRID),
        f"herding: random (lr {herding_lr(scored)})",
        *(f"herding: random lr {lr:g} (validation, no DSA)" for lr in scores.LR_GRID),
        f"herding: random_no_dsa (lr {herding_lr(scored, 'no_dsa')})", "herding: full",
    ]  # fmt: skip
    assert all(a[0] == "ScoreStarted" and b == ("ScoreFinished", a[1])
               for a, b in zip(announced[::2], announced[1::2], strict=True))  # fmt: skip
    assert all(row.reused for row in scored.rows)  # the finished rows are taken as they are
    herding = scored.rows[1].scores
    sources = {name: m["source"] for name, m in herding["accuracies"].items()}
    assert sources == {
        "set": "reused record",  # the row's own evaluation
        "set_hard": "reused record",  # a hard-label set: the same records
        "set_no_dsa": "trained now",
        "random": "reused record",  # trained for the random row's scores just before
        "random_no_dsa": "reused record",
        "full": "the comparison's full row",
    }
    first_scored = scored.rows[0].scores["accuracies"]
    assert (first_scored["random"]["source"], first_scored["random_no_dsa"]["source"]) == (
        "trained now",
        "trained now",
    )
    assert herding["accuracies"]["set"]["accuracies"] == first.rows[1].result.accuracies
    assert herding["accuracies"]["full"]["accuracies"] == first.rows[2].result.accuracies
    random_lr = herding["random_lr"]["dsa"]["lr"]
    assert random_lr in scores.LR_GRID and herding["random_lr"]["dsa"]["picked_on"] == "validation"
    a = {name: m["accuracy"] for name, m in herding["accuracies"].items()}
    assert herding["hlr"] == pytest.approx(a["full"] - a["set_hard"], abs=1e-12)
    assert herding["ior"] == pytest.approx(a["set"] - a["random"], abs=1e-12)
    alpha = 0.5 * herding["ior"] - 0.5 * herding["hlr"]
    assert herding["lrs"] == pytest.approx((math.exp(alpha) - INV_E) / DENOMINATOR, rel=1e-12)
    assert scored.rows[2].scores is None  # the whole-set row has no set to score
    saved = json.loads(scored.json_path.read_text())
    assert set(saved["rows"][1]["scores"]) >= {"hlr", "ior", "lrs", "ars", "convention"}
    assert "| HLR | IOR | LRS | ARS |" in scored.markdown_path.read_text()
    again = compare_engine.compare(
        plan, rows, tmp_path / "c", scores=scores_gather.ScoresRequest(), **kwargs
    )
    sources = {m["source"] for m in again.rows[1].scores["accuracies"].values()}
    assert sources == {"reused record", "the comparison's full row"}  # nothing trained again
    assert again.rows[1].scores["lrs"] == herding["lrs"]


@pytest.mark.slow
def test_cli_compare_scores_prints_the_columns(tiny_mnist, tmp_path):
    args = [
        "run", "--dataset", "mnist", "--ipc", "1", "--profile", "quick", "--image-size", "8",
        "--train-subset", "80", "--runs", "1", "--epochs", "1", "--test-subset", "20",
        "--data-dir", str(tiny_mnist), "--no-download", "--compare", "random,full",
        "--compare-budget", "full=1", "--scores", "--scores-convention", "ddranking",
        "--out", str(tmp_path / "c"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "HLR" in result.output and "LRS" in result.output
    assert "DD-Ranking's code (percent inside exp" in result.output
    saved = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert saved["rows"][0]["scores"]["unit"] == "percent"
    assert saved["rows"][0]["scores"]["random_lr"]["dsa"]["picked_on"] == "test"


@pytest.mark.slow
def test_cli_evaluate_scores_json_names_each_accuracy_and_its_source(tiny_mnist, tmp_path):
    plan = replace(_plan(), test_subset=20)
    summary = compare_engine.compare(
        plan, ("random",), tmp_path / "c", data_root=tiny_mnist, download=False
    )
    set_path = summary.rows[0].set_path
    args = [
        "evaluate", str(set_path), "--runs", "1", "--epochs", "1", "--test-subset", "20",
        "--data-dir", str(tiny_mnist), "--no-download", "--train-subset", "80", "--scores",
        "--score-weight", "0.25", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    found = payload["scores"]
    assert found["weight"] == 0.25 and found["convention"] == "ddpp"
    assert set(found["accuracies"]) == {
        "set", "set_hard", "set_no_dsa", "random", "random_no_dsa", "full",
    }  # fmt: skip
    assert found["accuracies"]["full"]["note"] == "whole set: --train-subset 80"
    assert found["accuracies"]["set"]["accuracies"] == payload["accuracies"]
    alpha = 0.25 * found["ior"] - 0.75 * found["hlr"]
    assert found["lrs"] == pytest.approx((math.exp(alpha) - INV_E) / DENOMINATOR, rel=1e-12)
    again = json.loads(CliRunner().invoke(app, args).stdout)["scores"]
    assert {m["source"] for m in again["accuracies"].values()} == {"reused record"}


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--score-weight", "0.3"], "--score-weight set the scores; add --scores."),
        (["--scores-convention", "ddranking"], "--scores-convention set the scores"),
        (["--scores", "--score-weight", "2"], "--score-weight must be between 0 and 1"),
        (["--scores", "--scores-convention", "x"], "--scores-convention must be one of"),
    ],
)
def test_cli_refuses_scores_options_in_one_line(tmp_path, extra, fragment):
    args = ["run", "--dataset", "mnist", "--ipc", "1", "--out", str(tmp_path / "r"), *extra]
    assert_one_line_error(CliRunner().invoke(app, args), fragment)


def test_cli_evaluate_refuses_scores_with_a_baseline():
    args = ["evaluate", "--baseline", "random", "--dataset", "mnist", "--ipc", "1", "--scores"]
    assert_one_line_error(CliRunner().invoke(app, args), "--scores only apply with set")


@pytest.mark.slow
def test_cli_run_scores_reuse_the_runs_evaluation(tiny_mnist, tmp_path):
    from tests.test_pipeline import TINY

    args = ["run", "--dataset", "mnist", "--ipc", "1", "--data-dir", str(tiny_mnist),
            "--out", str(tmp_path / "r"), *(str(a) for a in TINY), "--scores"]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "DD-Ranking's scores (ddpp (fractions; random lr picked on a validation" in result.output
    assert "HLR, IOR in fractions; LRS weight 0.5, ARS γ 0.5" in result.output
    payload = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    found = payload["scores"]
    assert found["accuracies"]["set"]["accuracies"] == payload["distilled"]["accuracies"]
    assert found["accuracies"]["set"]["source"] == "reused record"
    assert {m["source"] for m in found["accuracies"].values()} == {"reused record"}
