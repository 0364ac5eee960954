"""``--selection`` (engine/model_selection.py): validation, the default, or best-test, MTT's
convention of keeping and reporting the best mean test accuracy over the evaluation points;
labelled "test-selected (MTT's convention)" in every output. Runs on the tiny 8×8 MNIST buffer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, assert_same_run, ctrl_c_after
from test_distill import metrics, run
from test_distill import small_config as distill_small_config
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import data, distill, distilled, evaluate, pipeline, store
from ddpp_cli.engine.compare import CompareSummary, RowResult, markdown, row_config
from ddpp_cli.engine.compare.rows import ROWS, Budget
from ddpp_cli.engine.device import derive_seed
from ddpp_cli.engine.distill import DistillConfig
from ddpp_cli.engine.distill import validation as validation_module
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.model_selection import (
    BEST_TEST_LABEL,
    SELECTIONS,
    VALIDATION_LABEL,
    label_of_settings,
)
from ddpp_cli.engine.preprocess import Normalization
from ddpp_cli.engine.visualize import class_grid, curves_image
from ddpp_cli.engine.visualize.curves import labelled_title

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
MTT_LABEL = "test-selected (MTT's convention)"  # the wording issue 24 asks for, spelled out
TINY_TEST = 50  # tiny_mnist: 5 test images per class
TINY_TRAIN = 100  # 10 train images per class


def small_config(**overrides) -> DistillConfig:
    """test_distill's small run, 6 iterations, validated every 2 on 1 network × 1 epoch."""
    return distill_small_config(
        **{"iterations": 6, "eval_every": 2, "eval_runs": 1, "eval_epochs": 1, **overrides}
    )


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------- the option and its checks


def test_the_choices_and_their_labels():
    assert list(SELECTIONS) == ["validation", "best-test"]
    assert BEST_TEST_LABEL == MTT_LABEL
    assert VALIDATION_LABEL == evaluate.SELECTION_RULE == "validation split, tested once"
    assert DistillConfig.from_preset("mnist", 1).selection == "validation"
    # best-test holds no validation split out: the whole training pool is distilled from, as MTT
    assert small_config(selection="best-test").val_size == 0
    assert small_config().val_size is None  # the default: 10 % when the run starts
    assert label_of_settings({"selection": "best-test"}) == MTT_LABEL
    for settings in ({"selection": "validation"}, {}, {"selection": 3}):
        assert label_of_settings(settings) == VALIDATION_LABEL  # coresets, imports, old sets


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"selection": "best"}, "--selection must be one of: validation, best-test (got 'best')"),
        ({"selection": "best-test", "eval_every": 0}, "give --eval-every 1 or more"),
        ({"selection": "best-test", "val_size": 5}, "holds out no validation split; drop"),
    ],
)
def test_refusals(overrides, fragment):
    with pytest.raises(DdppError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        small_config(**overrides)


def test_the_cli_refuses_an_unknown_selection_in_one_line():
    for command in ("distill", "run"):
        result = invoke(command, "--dataset", "mnist", "--ipc", 1, "--selection", "best")
        assert_one_line_error(result, "--selection must be one of: validation, best-test")
    help_text = invoke("distill", "--help").output
    assert "--selection" in help_text and "best-test" in help_text


def test_the_default_keeps_every_existing_runs_identity():
    default = small_config()
    assert "selection" not in default.identity()  # as recorded before --selection existed
    chosen = small_config(selection="best-test")
    assert chosen.identity()["selection"] == "best-test"
    assert {k: v for k, v in chosen.identity().items() if k not in ("selection", "val_size")} == {
        k: v for k, v in default.identity().items() if k != "val_size"
    }


def test_compare_rows_and_run_plans_carry_the_selection():
    plan = pipeline.plan_run("mnist", 1, profile="quick", selection="best-test", eval_every=2)
    assert plan.distill.selection == "best-test" and plan.distill.val_size == 0
    for row in ("mtt", "ddpp", "dc", "dm"):
        assert row_config(plan, row, 10).selection == "best-test"
    default = pipeline.plan_run("mnist", 1, profile="quick")
    assert default.distill.selection == "validation"
    with pytest.raises(DdppError, match="give --eval-every 1 or more"):
        pipeline.plan_run("mnist", 1, profile="quick", selection="best-test")  # quick: 0


# ----------------------------------------------------------- which set is kept, on which split


class ScriptedEvaluation:
    """Stands in for the protocol's evaluation: call k returns mean ``means[k]`` (std 0.01, two
    networks at mean ∓ 0.01) and records what it was given."""

    def __init__(self, means: list[float]) -> None:
        self.means = means
        self.calls: list[dict] = []

    def __call__(self, images, labels, test_images, test_labels, *, num_classes, config, lr,
                 device, on_event=None, world=None, **kwargs):  # fmt: skip
        mean = self.means[len(self.calls)]
        self.calls.append(
            {"images": images.clone(), "tested": len(test_labels), "seed": config.seed}
        )
        return evaluate.EvalResult(
            arch=config.arch, accuracies=[mean - 0.01, mean + 0.01], mean=mean, std=0.01,
            seconds=0.0, lr=0.01, protocol={"runs": 2, "epochs": config.epochs},
        )  # fmt: skip


def test_best_test_keeps_the_iteration_of_the_best_test_mean(
    tiny_buffer, tiny_mnist, tmp_path, monkeypatch
):
    scripted = ScriptedEvaluation([0.30, 0.70, 0.50, 0.60])  # iterations 0, 2, 4, 6
    monkeypatch.setattr(validation_module, "evaluate_images", scripted)
    events = []
    folder = tmp_path / "run"
    summary = run(
        small_config(selection="best-test", test_runs=5), folder, tiny_buffer, tiny_mnist,
        on_event=events.append,
    )  # fmt: skip

    started = next(e for e in events if isinstance(e, distill.DistillStarted))
    assert (started.train_size, started.val_size) == (TINY_TRAIN, 0)  # nothing held out
    # Four evaluation points, each on the whole test split; no second test at the end.
    assert [call["tested"] for call in scripted.calls] == [TINY_TEST] * 4
    assert {call["seed"] for call in scripted.calls} == {derive_seed(0, "select_test_eval") % 2**31}

    best = store.read(folder / distill.BEST_NAME, store.DISTILLED_FORMAT)
    assert best.metadata["iteration"] == 2
    assert best.metadata["test_accuracy"] == 0.70 and best.metadata["test_std"] == 0.01
    assert best.metadata["selection"] == MTT_LABEL
    assert "val_accuracy" not in best.metadata
    assert best.metadata["settings"]["selection"] == "best-test"
    assert torch.equal(best.tensors["images"], scripted.calls[1]["images"])  # iteration 2's
    assert not torch.equal(best.tensors["images"], scripted.calls[3]["images"])

    lines = metrics(folder)
    assert [(x["iteration"], x["test_accuracy"]) for x in lines if "test_accuracy" in x] == [
        (0, 0.30), (2, 0.70), (4, 0.50), (6, 0.60),
    ]  # fmt: skip
    assert not any("val_accuracy" in x for x in lines)

    # The figure reported is the best point's own test, as MTT reports it.
    assert summary.best_iteration == 2 and summary.best_val_accuracy is None
    assert summary.test.mean == 0.70 and summary.test.accuracies == [0.69, 0.71]
    assert summary.test.selection == MTT_LABEL and summary.tested == folder / distill.BEST_NAME
    saved = json.loads((folder / distill.SUMMARY_NAME).read_text())
    assert saved["selection"] == saved["test"]["selection"] == MTT_LABEL
    assert saved["test"]["mean"] == 0.70 and saved["best_iteration"] == 2


def test_the_default_still_selects_on_validation_and_tests_once(
    tiny_buffer, tiny_mnist, tmp_path, monkeypatch
):
    scripted = ScriptedEvaluation([0.30, 0.70, 0.50, 0.60, 0.55])  # 4 validations, 1 test
    monkeypatch.setattr(validation_module, "evaluate_images", scripted)
    folder = tmp_path / "run"
    summary = run(small_config(test_runs=2), folder, tiny_buffer, tiny_mnist)
    held_out = round(0.1 * TINY_TRAIN)
    assert [call["tested"] for call in scripted.calls] == [held_out] * 4 + [TINY_TEST]
    best = store.read(folder / distill.BEST_NAME, store.DISTILLED_FORMAT)
    assert best.metadata["iteration"] == 2 and best.metadata["val_accuracy"] == 0.70
    assert not {"selection", "test_accuracy", "test_std"} & set(best.metadata)
    assert summary.best_val_accuracy == 0.70 and summary.test.mean == 0.55
    assert summary.test.selection == VALIDATION_LABEL
    saved = json.loads((folder / distill.SUMMARY_NAME).read_text())
    assert saved["selection"] == saved["test"]["selection"] == VALIDATION_LABEL
    assert not any("test_accuracy" in x or "test_result" in x for x in metrics(folder))


# ------------------------------------------------------------------------ resume, bit for bit


@pytest.fixture(scope="module")
def best_test_run(tiny_buffer, tiny_mnist, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("best-test")
    run(small_config(selection="best-test", eval_every=3), folder, tiny_buffer, tiny_mnist)
    return folder


def test_a_killed_best_test_run_resumes_bit_for_bit(
    best_test_run, tiny_buffer, tiny_mnist, tmp_path
):
    config = small_config(selection="best-test", eval_every=3)

    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, tiny_buffer, tiny_mnist, on_event=ctrl_c_after(5))
    assert store.read_metadata(tmp_path / distill.CHECKPOINT_NAME)["iteration"] == 4
    events = []
    summary = run(replace(config, selection="best-test"), tmp_path, tiny_buffer, tiny_mnist,
                  on_event=events.append)  # fmt: skip
    assert next(e for e in events if isinstance(e, distill.DistillStarted)).resumed
    assert_same_run(best_test_run, tmp_path)
    straight = json.loads((best_test_run / distill.SUMMARY_NAME).read_text())
    assert summary.test.accuracies == straight["test"]["accuracies"]
    assert summary.best_iteration == straight["best_iteration"]
    # A resume cannot switch the convention: the best so far was chosen by the other one.
    with pytest.raises(DdppError, match="selection: best-test → validation"):
        run(replace(config, selection="validation", val_size=None), tmp_path, tiny_buffer,
            tiny_mnist)  # fmt: skip


# ------------------------------------------------------------------------- labelled outputs


def write_set(root: Path, path: Path, settings: dict) -> Path:
    """A normalised tiny-MNIST set (one train image per class) with ``settings``."""
    train = data.load("mnist", root, "train", download=False)
    index = torch.cat([torch.nonzero(train.labels == k).flatten()[:1] for k in range(10)])
    return distilled.save(
        path,
        distilled.DistilledSet(
            images=Normalization((0.1307,), (0.3081,)).apply(train.images[index]),
            labels=train.labels[index], lr=0.01, dataset="mnist",
            class_names=train.class_names, source="distill", arch="convnet",
            preprocessing={"kind": "normalize", "mean": [0.1307], "std": [0.3081]},
            settings=settings,
        ),
    )  # fmt: skip


FAST = ("--epochs", "1", "--runs", "1", "--test-subset", "10", "--device", "cpu", "--no-download")


def test_evaluate_says_test_selected_in_its_json_and_protocol_line(best_test_run, tiny_mnist):
    best = best_test_run / distill.BEST_NAME
    result = invoke("evaluate", best, "--data-dir", tiny_mnist, *FAST, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["selection"] == MTT_LABEL
    result = invoke("evaluate", best, "--data-dir", tiny_mnist, *FAST)
    assert result.exit_code == 0, result.output
    assert f"the set is {MTT_LABEL}" in " ".join(result.output.split())
    crossarch = invoke("crossarch", best, "--archs", "convnet", "--data-dir", tiny_mnist,
                       *FAST, "--json")  # fmt: skip
    assert crossarch.exit_code == 0, crossarch.output
    assert MTT_LABEL in crossarch.stdout


def test_evaluate_of_a_validation_selected_set_is_unchanged(tiny_mnist, tmp_path):
    path = write_set(tiny_mnist, tmp_path / "set.safetensors", {"selection": "validation"})
    result = invoke("evaluate", path, "--data-dir", tiny_mnist, *FAST, "--json")
    assert json.loads(result.stdout)["selection"] == VALIDATION_LABEL
    result = invoke("evaluate", path, "--data-dir", tiny_mnist, *FAST)
    assert "test-selected" not in result.output and "the set is" not in result.output


def _row(row: str, selection: str) -> RowResult:
    result = evaluate.EvalResult(
        arch="convnet", accuracies=[0.5], mean=0.5, std=0.0, seconds=1.0, lr=0.01,
        protocol={"test_size": 10, "preprocessing": "normalize"}, selection=selection,
    )  # fmt: skip
    return RowResult(row, result, 1.0, False, None, Path("rows") / row,
                     Budget(None, None, None, "paper"), None)  # fmt: skip


def test_the_compare_markdown_marks_test_selected_rows():
    plan = pipeline.plan_run("mnist", 1, profile="quick")
    rows = (_row("random", VALIDATION_LABEL), _row("ddpp", MTT_LABEL))
    text = markdown(CompareSummary(Path("out"), plan, Path("data"), None, rows))
    assert f"| {ROWS['ddpp'].label} † | 50.00 ± 0.00 |" in text
    assert f"| {ROWS['random'].label} | 50.00 ± 0.00 |" in text
    assert f"† {MTT_LABEL}: " in text and VALIDATION_LABEL in text
    plain = markdown(CompareSummary(Path("out"), plan, Path("data"), None, rows[:1]))
    assert "†" not in plain and "test-selected" not in plain


def test_curves_say_test_selected():
    tested = [{"iteration": 0, "loss": 1.0, "test_accuracy": 0.4},
              {"iteration": 2, "loss": 0.5, "test_accuracy": 0.6}]  # fmt: skip
    assert labelled_title("ddpp distill run r", tested) == f"ddpp distill run r, {MTT_LABEL}"
    validated = [{"iteration": 0, "loss": 1.0, "val_accuracy": 0.4}]
    assert labelled_title("ddpp distill run r", validated) == "ddpp distill run r"
    assert curves_image(tested, title="r").size == (1200, 800)


def test_the_grid_of_a_test_selected_set_says_so_below_its_cells():
    def grid(settings: dict):
        chosen = distilled.DistilledSet(
            images=torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
            labels=torch.arange(10), lr=0.01, dataset="mnist",
            class_names=tuple(str(k) for k in range(10)), source="distill",
            preprocessing={"kind": "normalize", "mean": [0.5], "std": [0.5]}, settings=settings,
        )  # fmt: skip
        return class_grid(chosen)

    plain, tested = grid({"selection": "validation"}), grid({"selection": "best-test"})
    assert grid({}).tobytes() == plain.tobytes()  # an older set: no caption either
    assert tested.height > plain.height and tested.width >= plain.width
    # The cells keep their places; the band below holds ink (the caption).
    assert tested.crop((0, 0, plain.width, plain.height)).tobytes() == plain.tobytes()
    band = tested.crop((0, plain.height, tested.width, tested.height))
    assert band.getextrema()[0] < 128


def test_ddpp_distill_prints_the_convention(tiny_buffer, tiny_mnist, tmp_path):
    result = invoke(
        "distill", "--dataset", "mnist", "--ipc", 1, "--buffer", tiny_buffer,
        "--data-dir", tiny_mnist, "--no-download", "--device", "cpu", "--syn-steps", 2,
        "--expert-epochs", 1, "--max-start-epoch", 2, "--iterations", 2, "--batch-syn", 5,
        "--lr-lr", 1e-7, "--eval-every", 2, "--eval-runs", 1, "--eval-epochs", 1,
        "--selection", "best-test", "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line.replace("│", " ").split() for line in result.output.splitlines()]
    assert ["selection", "best-test", "user"] in rows  # the settings table
    assert ["selection", *MTT_LABEL.split()] in rows  # the summary table
    assert "100 train / 0 validation /" in result.output


@pytest.mark.slow
def test_ddpp_run_labels_its_table_and_run_json(tiny_mnist, tmp_path):
    result = invoke(
        "run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist, "--out", tmp_path / "r",
        "--profile", "quick", "--no-download", "--device", "cpu", "--image-size", 8,
        "--train-subset", 80, "--iterations", 2, "--syn-steps", 2, "--expert-epochs", 1,
        "--max-start-epoch", 2, "--lr-img", 100, "--lr-lr", 1e-7, "--runs", 1, "--epochs", 2,
        "--test-subset", 20, "--eval-every", 2, "--eval-runs", 1, "--eval-epochs", 1,
        "--selection", "best-test",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    first_cells = [x.split("│")[1].strip() for x in result.output.splitlines() if x[:1] == "│"]
    assert f"distilled (DDPP, ε 0.1, {MTT_LABEL})" in " ".join(first_cells)  # (a wrapped cell)
    summary = json.loads((tmp_path / "r" / "run.json").read_text())
    assert summary["selection"] == summary["distilled"]["selection"] == MTT_LABEL
    assert summary["random_baseline"]["selection"] == VALIDATION_LABEL  # a coreset: not chosen
    assert summary["distill"]["selection"] == MTT_LABEL
    assert summary["plan"]["distill"]["selection"] == "best-test"
