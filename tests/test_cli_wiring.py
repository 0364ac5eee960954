"""Wiring: the config each command builds from its options, with the engine call patched out.

Fast (no data, no training): each fake engine records what it was given and stops the command
with a DdppError, so the command exits 2 right after building its config.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.commands import _settings
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine import evaluate, pipeline, store
from ddpp_cli.engine.errors import DdppError

runner = CliRunner()

# (flag, value on the command line, DistillConfig field, value expected in the config)
SHARED_SETTINGS = [
    ("--eps", "0.25", "eps", 0.25),
    ("--arch", "convnet-d3", "arch", "convnet-d3"),
    ("--iterations", "7", "iterations", 7),
    ("--syn-steps", "9", "syn_steps", 9),
    ("--expert-epochs", "3", "expert_epochs", 3),
    ("--max-start-epoch", "4", "max_start_epoch", 4),
    ("--batch-syn", "5", "batch_syn", 5),
    ("--batch-syn", "0", "batch_syn", None),  # 0 = every image each step
    ("--lr-img", "50", "lr_img", 50.0),
    ("--lr-lr", "0.001", "lr_lr", 0.001),
    ("--lr-teacher", "0.02", "lr_teacher", 0.02),
    ("--init", "noise", "init", "noise"),
    ("--eval-every", "11", "eval_every", 11),
    ("--eval-runs", "2", "eval_runs", 2),
    ("--eval-epochs", "13", "eval_epochs", 13),
    ("--checkpoint-every", "6", "checkpoint_every", 6),
    ("--val-size", "40", "val_size", 40),
    ("--train-subset", "300", "train_subset", 300),
    ("--no-zca", None, "zca", False),
    ("--seed", "5", "seed", 5),
    ("--unroll", "memory", "unroll", "memory"),  # the lever an out-of-memory run continues with
    ("--unroll-budget", "512", "unroll_budget", 512),
]


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Replace the engine calls of distill and run by recorders."""
    recorded: list[dict] = []

    def fake_distill(config, folder, **kwargs):
        recorded.append({"config": config, "folder": folder, **kwargs})
        raise DdppError("engine patched out")

    def fake_pipeline(plan, folder, **kwargs):
        recorded.append({"config": plan.distill, "plan": plan, "folder": folder, **kwargs})
        raise DdppError("engine patched out")

    monkeypatch.setattr(distill_engine, "distill", fake_distill)
    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    return recorded


def invoke(calls: list[dict], *args: str) -> dict:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "engine patched out" in result.output, result.output
    return calls[-1]


def base(command: str, tmp_path: Path) -> list[str]:
    return [command, "--dataset", "mnist", "--ipc", "2", "--out", str(tmp_path / command)]


def test_distill_builds_the_preset_config_with_the_options_on_top(calls, tmp_path):
    options = ["--iterations", "7", "--compile", "--unroll", "memory", "--device", "cpu"]
    got = invoke(calls, *base("distill", tmp_path), *options, "--buffer", str(tmp_path / "buf"))
    config = got["config"]
    assert (config.dataset, config.ipc, config.iterations) == ("mnist", 2, 7)
    assert (config.syn_steps, config.expert_epochs, config.max_start_epoch) == (20, 2, 10)
    assert config.compile is True and config.unroll == "memory"
    assert config.eps == 0.1 and config.zca is None and config.test_runs == 5
    assert got["folder"] == tmp_path / "distill"
    assert got["buffer"] == tmp_path / "buf" and got["device"] == torch.device("cpu")


def test_run_builds_the_plan_from_profile_and_options(calls, tmp_path):
    options = ["--profile", "QUICK", "--runs", "2", "--parallel", "3", "--device", "cpu"]
    got = invoke(calls, *base("run", tmp_path), *options)
    plan = got["plan"]
    assert plan.profile == "quick" and plan.evaluation.runs == 2
    assert plan.distill.iterations == pipeline.QUICK["iterations"]
    assert plan.distill.eps == 0.1 and plan.distill.arch == "convnet"
    assert got["parallel"] == 3 and got["folder"] == tmp_path / "run"


@pytest.mark.parametrize(("flag", "value", "field", "expected"), SHARED_SETTINGS)
def test_a_shared_option_sets_the_same_field_in_distill_and_run(
    calls, tmp_path, flag, value, field, expected
):
    given = [flag] if value is None else [flag, value]
    from_distill = invoke(calls, *base("distill", tmp_path), *given)["config"]
    from_run = invoke(calls, *base("run", tmp_path), *given)["config"]
    assert getattr(from_distill, field) == expected
    assert getattr(from_run, field) == expected


def _options_by_flag(command: str) -> dict[str, object]:
    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    return {p.opts[0]: p for p in group.get_command(ctx, command).params if p.opts}


def test_shared_options_read_the_same_in_distill_and_run():
    distill, run = _options_by_flag("distill"), _options_by_flag("run")
    shared = sorted(set(distill) & set(run) - {"--help", "--quiet"})
    assert len(shared) >= 25
    for flag in shared:
        assert distill[flag].help == run[flag].help, flag
    assert distill["--quiet"].help.endswith("the run folder.")


def test_settings_rejects_an_unknown_name():
    assert _settings.settings({"iterations": 3, "eps": None}, ["iterations", "eps"]) == {
        "iterations": 3
    }
    with pytest.raises(TypeError, match="iteratons"):
        _settings.settings({"iteratons": 3}, ["iterations"])


def test_help_defaults_are_the_config_fields():
    distill = _options_by_flag("distill")
    config = distill_engine.DistillConfig
    assert distill["--eval-runs"].help.endswith(f"(default: {config.eval_runs})")
    assert distill["--unroll-budget"].help.endswith(f"(default: {config.unroll_budget})")
    assert distill["--compile"].help.endswith("(default: no-compile)")  # a switch: its flag
    assert "tm 5000, dc/dsa 1000, dm 20000, cafe/cafe-dsa 2000" in distill["--iterations"].help
    assert "noise for dc and cafe and cafe-dsa, else real" in distill["--init"].help
    run = _options_by_flag("run")
    evaluation = evaluate.EvalConfig
    assert f"paper {evaluation.runs})" in run["--runs"].help
    assert f"quick {pipeline.QUICK['epochs']}, paper {evaluation.epochs})" in run["--epochs"].help


def test_no_command_module_imports_another():
    commands = ("buffer", "distill", "evaluate", "crossarch", "visualize", "run")
    folder = Path(__file__).parents[1] / "ddpp_cli" / "commands"
    for module in [*commands, *(p.stem for p in folder.glob("_*.py"))]:
        tree = ast.parse((folder / f"{module}.py").read_text())
        imported = {
            name.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "ddpp_cli.commands"
            for name in node.names
        } | {
            node.module.rsplit(".", 1)[1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("ddpp_cli.commands.")
        }
        assert not imported & set(commands), (module, imported & set(commands))


# ------------------------------------------------------------------------ one resume rule


def _saved_run(folder: Path, iteration: int = 4) -> distill_engine.DistillConfig:
    config = distill_engine.DistillConfig.from_preset("mnist", 2, iterations=10, zca=False)
    folder.mkdir(parents=True)
    meta = {"config": asdict(config), "iteration": iteration}
    path = folder / distill_engine.CHECKPOINT_NAME
    store.write(path, {"x": torch.zeros(1)}, store.CHECKPOINT_FORMAT, meta)
    return config


def test_resume_takes_the_saved_config_and_changeable_options(tmp_path):
    saved = _saved_run(tmp_path / "run")
    resolved = distill_engine.resolve({"iterations": 20, "eval_every": 0}, tmp_path / "run")
    assert resolved.resumed
    assert resolved.config == replace(saved, iterations=20, eval_every=0)
    assert resolved.origin["iterations"] == "user" and resolved.origin["lr_img"] == "resume"


@pytest.mark.parametrize(
    ("given", "message"),
    [({"lr_img": 7.0}, "other settings"), ({"iterations": 3}, "already done 4 iterations")],
)
def test_resume_refuses_a_conflict(tmp_path, given, message):
    _saved_run(tmp_path / "run")
    with pytest.raises(DdppError, match=message):
        distill_engine.resolve(given, tmp_path / "run")


def test_resume_checks_batch_syn_0_like_any_other_change(tmp_path):
    saved = _saved_run(tmp_path / "run")
    assert saved.batch_syn is None  # every image: --batch-syn 0 changes nothing
    assert distill_engine.resolve({"batch_syn": 0}, tmp_path / "run").config == saved
    folder = tmp_path / "minibatched"
    config = replace(saved, batch_syn=5)
    folder.mkdir()
    meta = {"config": asdict(config), "iteration": 4}
    store.write(folder / distill_engine.CHECKPOINT_NAME, {}, store.CHECKPOINT_FORMAT, meta)
    with pytest.raises(DdppError, match="batch_syn: 5 there vs None now"):
        distill_engine.resolve({"batch_syn": 0}, folder)


def test_a_new_run_needs_dataset_and_ipc_and_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(DdppError, match="--dataset and --ipc"):
        distill_engine.resolve({"dataset": "mnist"}, None)
    with pytest.raises(DdppError, match="not a run to resume"):
        distill_engine.resolve({}, tmp_path, resume=True)
    fresh = distill_engine.resolve({"dataset": "mnist", "ipc": 1, "batch_syn": 0}, tmp_path)
    assert not fresh.resumed and fresh.config.batch_syn is None
    assert fresh.origin["syn_steps"] == "preset" and fresh.origin["batch_syn"] == "user"


def test_distill_resume_conflict_is_one_line_before_the_engine_runs(calls, tmp_path):
    _saved_run(tmp_path / "run")
    result = runner.invoke(app, ["distill", "--resume", str(tmp_path / "run"), "--lr-img", "7"])
    assert result.exit_code == 2 and "other settings" in result.output
    assert calls == []
