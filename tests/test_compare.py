"""``ddpp run --compare`` (engine/compare/): rows, budgets, references, reuse and resume.

Tiny generated data (8×8 MNIST-format images, 2–3 evaluation networks × 3 epochs). The long
end-to-end test injects a coreset runner for its dsa row (to stay fast); one test runs a real
matching row (dm) through ``distill --method``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import compare as compare_engine
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import distilled, pipeline
from ddpp_cli.engine.distill.methods import registry
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice
from tests.conftest import assert_one_line_error, ctrl_c_after

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def tiny_plan(**changes) -> pipeline.RunPlan:
    settings = dict(
        profile="quick", image_size=8, train_subset=80, experts=1, iterations=2, syn_steps=2,
        expert_epochs=1, max_start_epoch=2, lr_img=100.0, lr_lr=1e-7, runs=2, epochs=3,
        test_subset=20,
    )  # fmt: skip
    settings.update(changes)
    return pipeline.plan_run("mnist", 1, **settings)


def as_random(job: compare_engine.RowJob):
    """A stand-in runner: a real random coreset, made and evaluated in the row's folder."""
    no_budget = compare_engine.Budget(None, None, None, "–")
    return compare_engine.run_coreset_row(replace(job, row="random", budget=no_budget))


def accuracies(summary: compare_engine.CompareSummary) -> list[tuple[str, list[float]]]:
    return [(row.row, row.result.accuracies) for row in summary.rows]


# ------------------------------------------------------------------------------ pure parts


def test_rows_keep_the_order_given_and_accept_dc():
    assert compare_engine.parse_rows("ddpp, Random,dc") == ("ddpp", "random", "dc")
    assert compare_engine.parse_rows("all") == compare_engine.TABLE_I
    # the seed's Table I columns: CAFE+DSA (the paper's "CAFE" figures), the whole set last
    assert compare_engine.TABLE_I == (
        "random", "forgetting", "herding", "dsa", "dm", "cafe-dsa", "mtt", "ddpp", "full",
    )  # fmt: skip
    with pytest.raises(DdppError, match="unknown --compare row 'krr'; choose from: random, "):
        compare_engine.parse_rows("random,krr")
    with pytest.raises(DdppError, match="names dm more than once"):
        compare_engine.parse_rows("dm,random,dm")


def test_budgets_parse_and_refuse():
    assert compare_engine.parse_budgets("dsa=200, DM=400") == {"dsa": 200, "dm": 400}
    assert compare_engine.parse_budgets(None) == {}
    for text, fragment in (
        ("dsa", "not ROW=COUNT"),
        ("dsa=x", "not ROW=COUNT"),
        ("krr=3", "unknown --compare-budget row 'krr'"),
        ("random=3", "the random row has no budget"),
        ("dm=0", "at least 1"),
    ):
        with pytest.raises(DdppError, match=fragment):
            compare_engine.parse_budgets(text)


def test_each_rows_budget_comes_from_the_profile_or_the_user():
    quick = pipeline.plan_run("fashionmnist", 1, profile="quick")
    budgets = compare_engine.row_budgets(quick, tuple(compare_engine.ROWS), {"dm": 7})
    batch_real = compare_engine.Cut("batch_real", 128, 256)
    assert budgets["dm"] == compare_engine.Budget("iterations", 7, 20000, "user", (batch_real,))
    assert budgets["dm"].text() == "7 iterations, batch_real 128 (paper 20000, 256)"
    assert budgets["dsa"].text() == "100 iterations, batch_real 64 (paper 1000, 256)"
    assert budgets["dc"].value == 40 and budgets["dc"].origin == "profile"
    assert budgets["cafe"].text() == (
        "4 iterations, batch_real 64, max_image_steps 10, max_inner_epochs 10 "
        "(paper 2000, 256, no cap, no cap)"
    )
    assert budgets["forgetting"].text() == "10 epochs (paper 200)"
    assert budgets["mtt"].value == budgets["ddpp"].value == quick.distill.iterations == 60
    assert budgets["mtt"].text() == "60 iterations (paper 5000)"
    assert budgets["random"].text() == "–"
    paper = pipeline.plan_run("fashionmnist", 1, profile="paper")
    budgets = compare_engine.row_budgets(paper, ("dsa", "cafe", "ddpp"))
    assert budgets["cafe"].value == 2000 and budgets["ddpp"].value == 5000
    assert budgets["dsa"].text() == "1000 iterations (paper 1000)"
    assert budgets["cafe"].text() == (  # ddpp's preset caps CAFE's loops, the paper does not
        "2000 iterations, max_image_steps 100, max_inner_epochs 100 (paper 2000, no cap, no cap)"
    )
    with pytest.raises(DdppError, match="names dm, not among the --compare rows"):
        compare_engine.row_budgets(quick, ("random",), {"dm": 3})


def test_coreset_rows_take_the_runs_data_buffer_and_forgettings_budget(tmp_path):
    plan = tiny_plan()
    budget = compare_engine.row_budgets(plan, ("forgetting",), {"forgetting": 3})["forgetting"]
    job = compare_engine.RowJob("forgetting", plan, budget, tmp_path, tmp_path / "buffer")
    config = compare_engine.coreset_config(job)
    assert (config.method, config.forgetting_epochs, config.buffer) == (
        "forgetting",
        3,
        tmp_path / "buffer",
    )
    no_budget = compare_engine.row_budgets(plan, ("herding",))["herding"]
    config = compare_engine.coreset_config(replace(job, row="herding", budget=no_budget))
    assert config.method == "herding" and config.buffer == tmp_path / "buffer"
    assert config.train_subset == plan.buffer.train_subset == 80
    config = compare_engine.coreset_config(
        replace(job, row="random", budget=no_budget, buffer=None)
    )
    assert config.buffer is None and config.seed == plan.evaluation.seed


def test_the_deepcore_forgetting_row_is_forgetting_with_deepcores_ranking(tmp_path):
    plan = tiny_plan()
    rows = compare_engine.parse_rows("forgetting,forgetting-deepcore")
    budgets = compare_engine.row_budgets(plan, rows, {"forgetting-deepcore": 4})
    assert budgets["forgetting-deepcore"].text() == "4 epochs (paper 200)"
    jobs = {
        row: compare_engine.RowJob(row, plan, budgets[row], tmp_path / row, None) for row in rows
    }
    toneva, deepcore = (compare_engine.coreset_config(jobs[row]) for row in rows)
    assert (deepcore.method, deepcore.forgetting_epochs, deepcore.forgetting_unlearned) == (
        "forgetting", 4, "deepcore",
    )  # fmt: skip
    assert toneva.forgetting_unlearned == "toneva"
    settings = [compare_engine.row_settings(jobs[row]) for row in rows]
    assert settings[0] != settings[1]  # never reused for one another
    assert compare_engine.ROWS["forgetting-deepcore"].label == "Forgetting (DeepCore)"


def test_trajectory_rows_differ_only_in_eps():
    plan = tiny_plan(eps=0.2)
    mtt = compare_engine.trajectory_config(plan, "mtt", 9)
    ddpp = compare_engine.trajectory_config(plan, "ddpp", 9)
    assert (mtt.eps, ddpp.eps, mtt.iterations) == (0.0, 0.2, 9)
    assert replace(mtt, eps=0.2) == ddpp == replace(plan.distill, iterations=9)


def test_matching_rows_run_their_own_method_without_a_buffer():
    plan = tiny_plan()
    config = compare_engine.matching_config(plan, "dsa", 7)
    assert (config.method, config.iterations, config.test_runs) == ("dsa", 7, 0)
    assert (config.dataset, config.ipc, config.seed) == ("mnist", 1, plan.distill.seed)
    assert config.lr_img == 0.1  # DSA's own preset, not tm's
    assert config.batch_real == (64 if plan.profile == "quick" else 256)


def test_a_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "draft.tex").write_text("mine")
    with pytest.raises(DdppError, match=r"other files \(draft.tex\)"):
        compare_engine.compare(tiny_plan(), ("random",), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["draft.tex"]


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_a_matching_row_distills_with_its_own_method(tiny_mnist, tmp_path):
    summary = compare_engine.compare(
        tiny_plan(), ("dm",), tmp_path / "c", budgets={"dm": 2}, data_root=tiny_mnist,
        download=False,
    )  # fmt: skip
    (row,) = summary.rows
    assert row.row == "dm" and 0.0 <= row.result.mean <= 1.0
    made = distilled.load(Path(row.set_path))
    assert made.settings["method"] == "dm" and made.settings["iterations"] == 2


def test_a_matching_row_records_its_whole_config_so_a_changed_cut_is_not_reused(
    monkeypatch, tmp_path
):
    plan = tiny_plan()
    budget = compare_engine.row_budgets(plan, ("dsa",))["dsa"]
    job = compare_engine.RowJob("dsa", plan, budget, tmp_path, None)
    before = compare_engine.row_settings(job)
    assert before["distill"]["method"] == "dsa" and before["distill"]["batch_real"] == 64
    dsa = replace(distill_engine.get_method("dsa"), quick_cuts={"batch_real": 32})
    monkeypatch.setitem(registry._REGISTRY, "dsa", dsa)
    assert compare_engine.row_settings(job)["distill"]["batch_real"] == 32


@pytest.mark.slow
def test_compare_runs_every_row_under_one_protocol_then_reuses_them(tiny_mnist, tmp_path):
    events: list[object] = []
    options = {"data_root": tiny_mnist, "download": False, "runners": {"dsa": as_random}}
    rows = ("random", "herding", "dsa", "mtt", "ddpp")
    first = compare_engine.compare(
        tiny_plan(), rows, tmp_path / "c", on_event=events.append, **options
    )
    assert [row.row for row in first.rows] == list(rows)
    steps = [e.step for e in events if isinstance(e, compare_engine.StepStarted)]
    assert steps == ["buffer", *rows]
    tests = {row.result.protocol["test_size"] for row in first.rows}
    assert tests == {20}  # the same test images for every row
    for row in first.rows:
        assert len(row.result.accuracies) == 2 and not row.reused
        assert row.result.protocol["epochs"] == 3 and row.result.protocol["seed"] == 0
        assert row.set_path is not None and row.set_path.is_file()
        assert json.loads((row.folder / "row.json").read_text())["status"] == "finished"
    mtt, ddpp = first.rows[-2:]
    assert mtt.set_path.parent == tmp_path / "c" / "compare" / "mtt" / "run"
    eps = [json.loads((r.folder / "row.json").read_text())["settings"]["distill"]["eps"]
           for r in (mtt, ddpp)]  # fmt: skip
    assert eps == [0.0, 0.1]
    assert mtt.budget.text() == "2 iterations (paper 5000)"
    assert first.rows[0].reference.text() == "64.9ᵘ"  # MNIST IPC 1, not confirmed
    payload = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert payload["format"] == compare_engine.FORMAT
    assert [r["row"] for r in payload["rows"]] == list(rows)
    assert payload["rows"][2]["budget"]["value"] == 100 and payload["rows"][2]["runs"] == 2
    assert payload["rows"][2]["budget"]["cuts"] == [
        {"setting": "batch_real", "value": 64, "paper": 256}
    ]
    assert (
        "| 100 iterations, batch_real 64 (paper 1000, 256) |"
        in (tmp_path / "c" / "compare.md").read_text()
    )
    table = (tmp_path / "c" / "compare.md").read_text()
    assert (
        "| Random | " in table and "| DDPP | " in table and "Protocol: convnet, 3 epochs" in table
    )
    assert "| 64.9ᵘ |" in table and "- DSA: DatasetCondensation readme; std: KIP" in table
    assert "ᵘ not confirmed: recalled from the papers" in table

    events.clear()
    again = compare_engine.compare(
        tiny_plan(), rows, tmp_path / "c", on_event=events.append, **options
    )
    assert all(row.reused for row in again.rows)
    assert accuracies(again) == accuracies(first)
    assert "reused" in (tmp_path / "c" / "compare.md").read_text()
    assert not any(isinstance(e, Notice) for e in events)


@pytest.mark.slow
def test_a_rerun_after_an_interruption_gives_the_same_table(tiny_mnist, tmp_path):
    rows = ("random", "herding", "dc")
    options = {"data_root": tiny_mnist, "download": False}
    whole = compare_engine.compare(
        tiny_plan(), rows, tmp_path / "whole", runners={"dc": as_random}, **options
    )

    def interrupted(job):
        raise KeyboardInterrupt  # between rows: random and herding are done

    with pytest.raises(KeyboardInterrupt):
        compare_engine.compare(
            tiny_plan(), rows, tmp_path / "cut", runners={"dc": interrupted}, **options
        )
    started = json.loads((tmp_path / "cut" / "compare" / "dc" / "row.json").read_text())
    assert started["status"] == "started" and not (tmp_path / "cut" / "compare.md").exists()
    events: list[object] = []
    resumed = compare_engine.compare(
        tiny_plan(), rows, tmp_path / "cut", runners={"dc": as_random}, on_event=events.append,
        **options,
    )  # fmt: skip
    assert [row.reused for row in resumed.rows] == [True, True, False]
    details = [e.detail for e in events if isinstance(e, compare_engine.StepStarted)]
    assert details[2].startswith("40 iterations, batch_real 64 (paper 1000, 256), continuing in ")
    assert accuracies(resumed) == accuracies(whole)


def test_a_row_of_other_settings_is_never_overwritten(tiny_mnist, tmp_path):
    options = {"data_root": tiny_mnist, "download": False}
    first = compare_engine.compare(tiny_plan(), ("random",), tmp_path, **options)
    before = (first.rows[0].folder / "row.json").read_text()
    events: list[object] = []
    second = compare_engine.compare(
        tiny_plan(runs=3), ("random",), tmp_path, on_event=events.append, **options
    )
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "'runs': 2" in notices[0] and "random-2" in notices[0]
    assert second.rows[0].folder == tmp_path / "compare" / "random-2"
    assert (first.rows[0].folder / "row.json").read_text() == before
    assert second.rows[0].result.accuracies[:2] == first.rows[0].result.accuracies
    third = compare_engine.compare(tiny_plan(runs=3), ("random",), tmp_path, **options)
    assert third.rows[0].reused and third.rows[0].folder == second.rows[0].folder


# ------------------------------------------------------------------------------------- CLI

TINY = [
    "--dataset", "mnist", "--ipc", 1, "--profile", "quick", "--no-download", "--device", "cpu",
    "--image-size", 8, "--train-subset", 80, "--syn-steps", 2, "--expert-epochs", 1,
    "--max-start-epoch", 2, "--lr-img", 100, "--lr-lr", 1e-7, "--runs", 2, "--epochs", 3,
    "--test-subset", 20,
]  # fmt: skip


def invoke(*args: object):
    return runner.invoke(app, ["run", *[str(a) for a in args]])


def test_cli_prints_and_writes_the_table(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.setitem(compare_engine.RUNNERS, "matching", as_random)
    out = tmp_path / "table"
    result = invoke(*TINY, "--data-dir", tiny_mnist, "--out", out, "--compare", "dm,mtt",
                    "--compare-budget", "mtt=2,dm=5")  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for fragment in ("[1/3] buffer", "[2/3] dm: 5 iterations, batch_real 128 (paper 20000, 256)",
                     "[3/3] mtt", "ddpp run --compare: mnist, IPC 1", "DM", "MTT",
                     "protocol: convnet", "89.7ᵘ",
                     "DM: recalled from the papers, found in no source",
                     "ᵘ not confirmed", str(out / "compare.md")):  # fmt: skip
        assert fragment in text, result.output
    assert (out / "compare.md").is_file() and (out / "compare.json").is_file()
    result = invoke(*TINY, "--data-dir", tiny_mnist, "--out", out, "--compare", "dm,mtt",
                    "--compare-budget", "mtt=2,dm=5", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [r["reused"] for r in payload["rows"]] == [True, True]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--compare", "random,krr"], "unknown --compare row 'krr'; choose from: random,"),
        (["--compare", "random", "--iterations", "5"], "--iterations is ambiguous"),
        (["--compare-budget", "dm=5"], "add --compare ROWS"),
        (["--compare", "mtt,ddpp", "--eps", "0"], "--eps 0 makes the ddpp row the mtt row"),
        (["--compare", "random", "--compare-budget", "dm=5"], "names dm, not among"),
    ],
)
def test_cli_refuses_what_makes_no_sense_with_compare(tmp_path, args, fragment):
    result = invoke("--dataset", "mnist", "--ipc", 1, "--out", tmp_path / "r", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "r").exists()


def test_cli_wiring_builds_the_plan_rows_and_budgets(monkeypatch, tmp_path):
    recorded = []

    def fake_compare(plan, rows, folder, **kwargs):
        recorded.append({"plan": plan, "rows": rows, "folder": folder, **kwargs})
        raise DdppError("engine patched out")

    monkeypatch.setattr(compare_engine, "compare", fake_compare)
    result = invoke("--dataset", "fashionmnist", "--ipc", 1, "--profile", "quick", "--out",
                    tmp_path / "r", "--compare", "ddpp,dc,random", "--compare-budget", "dc=9",
                    "--runs", "4", "--eps", "0.2", "--buffer", tmp_path / "b")  # fmt: skip
    assert result.exit_code == 2 and "engine patched out" in result.output, result.output
    call = recorded[-1]
    assert call["rows"] == ("ddpp", "dc", "random") and call["budgets"] == {"dc": 9}
    assert call["folder"] == tmp_path / "r" and call["buffer"] == tmp_path / "b"
    assert call["plan"].evaluation.runs == 4 and call["plan"].distill.eps == 0.2
    assert call["plan"].profile == "quick"
    assert isinstance(call["folder"], Path)


@pytest.mark.slow
def test_an_interrupted_distillation_row_continues_from_its_checkpoint(tiny_mnist, tmp_path):
    options = {"data_root": tiny_mnist, "download": False}
    plan = tiny_plan(iterations=3)
    whole = compare_engine.compare(plan, ("mtt",), tmp_path / "whole", **options)

    with pytest.raises(KeyboardInterrupt):
        compare_engine.compare(
            plan, ("mtt",), tmp_path / "cut", on_event=ctrl_c_after(2), **options
        )
    run = tmp_path / "cut" / "compare" / "mtt" / "run"
    assert (run / "checkpoint.safetensors").is_file()
    events: list[object] = []
    resumed = compare_engine.compare(
        plan, ("mtt",), tmp_path / "cut", on_event=events.append, **options
    )
    started = [e for e in events if isinstance(e, distill_engine.DistillStarted)]
    assert started[0].resumed and started[0].start_iteration >= 1
    assert accuracies(resumed) == accuracies(whole)
    a, b = (distilled.load(row.set_path) for row in (whole.rows[0], resumed.rows[0]))
    assert torch.equal(a.images, b.images)


def test_a_rows_settings_table_says_where_its_values_come_from():
    plan = tiny_plan()
    origin = compare_engine.row_origin(plan, "dsa")
    assert (origin["method"], origin["iterations"], origin["lr_img"]) == (
        "row", "row budget", "preset",
    )  # fmt: skip
    assert origin["batch_real"] == "profile (CPU cut)" and origin["outer_loop"] == "preset"
    assert compare_engine.row_origin(plan, "mtt")["eps"] == "mtt row"
    assert compare_engine.row_origin(plan, "ddpp").get("eps") == plan.origin.get("eps")
