"""``ddpp run --labels``/``--lr-labels`` (the plan, the refusal with ``--compare``, a whole run
whose outputs name its labels) and ``ddpp run --scores`` written into ``run.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from PIL import Image
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import distilled, pipeline
from ddpp_cli.engine import visualize as vis
from ddpp_cli.engine.errors import DdppError
from tests.test_pipeline import TINY

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
LEARNED = "learned labels (soft CE, T 1)"  # tm's learned labels: soft CE at temperature 1
SCORES = ("hlr", "ior", "lrs", "ars")


def test_labels_reach_the_distillation_as_the_users():
    plan = pipeline.plan_run("mnist", 1, profile="quick", labels="learned", lr_labels=5.0)
    assert (plan.distill.labels, plan.distill.lr_labels) == ("learned", 5.0)
    assert plan.origin["labels"] == plan.origin["lr_labels"] == "user"
    teacher = pipeline.plan_run("mnist", 1, profile="quick", labels="teacher")
    assert (teacher.distill.labels, teacher.distill.lr_labels) == ("teacher", None)
    # DATM's configs/CIFAR-10/ConvIN/IPC1.yaml: lr_y 5, batch_syn 10, threshold 1.1 (as distill)
    learned = pipeline.plan_run("cifar10", 1, profile="quick", labels="learned")
    d = learned.distill
    assert (d.lr_labels, d.batch_syn, d.skip_threshold) == (5.0, 10, 1.1)
    for name in ("lr_labels", "batch_syn", "skip_threshold"):  # the settings table's "from"
        assert learned.origin[name] == "preset (DATM configs)", name
    assert learned.origin["syn_steps"] == "profile"  # the quick profile caps DATM's 80 at 20
    assert d.syn_steps == 20


def test_labels_hard_is_no_option():
    plain = pipeline.plan_run("mnist", 1, profile="quick")
    hard = pipeline.plan_run("mnist", 1, profile="quick", labels="hard")
    assert hard.distill == plain.distill and hard.buffer == plain.buffer
    assert hard.distill.identity() == plain.distill.identity()  # a run of either resumes the other
    assert hard.evaluation == plain.evaluation and hard.test_subset == plain.test_subset
    assert "labels" not in plain.origin and hard.origin["labels"] == "user"


def test_bad_labels_are_refused_by_the_distillation_rules():
    with pytest.raises(DdppError, match="--labels must be one of: hard, teacher, learned"):
        pipeline.plan_run("mnist", 1, profile="quick", labels="soft")
    with pytest.raises(DdppError, match="--lr-labels applies to --labels learned only"):
        pipeline.plan_run("mnist", 1, profile="quick", lr_labels=1.0)


@pytest.mark.parametrize(
    ("extra", "flags"),
    [
        (["--labels", "learned"], "--labels set one run's labels"),
        (["--lr-labels", "3"], "--lr-labels set one run's labels"),
        (["--labels", "learned", "--lr-labels", "3"], "--labels and --lr-labels set one run's"),
    ],
)
def test_labels_with_compare_are_refused_in_one_line(tmp_path, extra, flags):
    args = ["run", "--dataset", "mnist", "--ipc", "1", "--compare", "random,ddpp",
            "--out", str(tmp_path / "c"), *extra]  # fmt: skip
    result = runner.invoke(app, args)
    assert_one_line_error(result, flags, "add the rows ddpp-teacher or ddpp-learned")
    assert not (tmp_path / "c").exists()  # refused before anything was made


@pytest.mark.slow
@pytest.mark.usefixtures("wide_console")
def test_a_learned_label_run_names_its_labels_and_keeps_its_scores(
    good_buffer, tiny_mnist, tmp_path
):
    out = tmp_path / "run"
    args = ["run", "--dataset", "mnist", "--ipc", "1", "--data-dir", str(tiny_mnist),
            "--buffer", str(good_buffer), "--out", str(out), *(str(a) for a in TINY),
            "--labels", "learned", "--scores"]  # fmt: skip
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    saved = json.loads((out / "run.json").read_text())
    # --scores: run.json holds the scores, the very object --json prints
    assert saved["scores"] == payload["scores"]
    assert set(saved["scores"]) >= {"hlr", "ior", "lrs", "ars", "accuracies"}
    assert saved["scores"]["accuracies"]["set"]["accuracies"] == saved["distilled"]["accuracies"]
    # the labels: the set's, the evaluation's (it trained with them) and the run's
    chosen = distilled.load(Path(saved["set"]))
    assert (chosen.label_mode, chosen.target_loss, chosen.temperature) == ("learned", "soft-ce", 1)
    assert chosen.settings["labels"] == "learned"
    assert saved["labels"] == payload["labels"] == LEARNED
    assert saved["distill"]["labels"] == LEARNED
    assert saved["distilled"]["protocol"]["label_text"] == LEARNED
    assert saved["random_baseline"]["protocol"]["label_text"] == "hard labels"
    assert saved["plan"]["distill"]["labels"] == "learned"
    assert saved["plan"]["origin"]["labels"] == "user"
    # the grid: the hard grid of the same images over a caption band
    grid = Image.open(out / "grid.png")
    plain = vis.grid_layout(chosen, upsample=2).size
    assert grid.width >= plain[0] and grid.height > plain[1]

    again = runner.invoke(app, args)  # finished: all from records
    assert again.exit_code == 0, again.output
    assert f"distilled (DDPP, ε 0.1, {LEARNED})" in again.output
    rescored = json.loads((out / "run.json").read_text())["scores"]  # rewritten by the rerun
    assert {k: rescored[k] for k in SCORES} == {k: payload["scores"][k] for k in SCORES}
    assert {m["source"] for m in rescored["accuracies"].values()} == {"reused record"}


@pytest.mark.slow
@pytest.mark.usefixtures("wide_console")
def test_a_hard_label_runs_json_names_hard_labels_and_no_scores(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--dataset", "mnist", "--ipc", "1", "--data-dir", str(tiny_mnist),
            "--out", str(out), *(str(a) for a in TINY), "--labels", "hard"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "distilled (DDPP, ε 0.1)" in result.output and "labels (" not in result.output
    saved = json.loads((out / "run.json").read_text())
    assert saved["labels"] == "hard labels" and "scores" not in saved
    assert distilled.load(Path(saved["set"])).targets is None
    grid = Image.open(out / "grid.png")
    assert grid.size == vis.grid_layout(distilled.load(Path(saved["set"])), upsample=2).size
