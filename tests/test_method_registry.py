"""The registry of distillation methods (``distill.methods``): every method reachable from the
command line and documented, its records equal to the tables they replaced, and the one
resolution (preset → profile → options) with each value's origin."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import compare as compare_engine
from ddpp_cli.engine import distill, pipeline
from ddpp_cli.engine.distill.methods import registry
from ddpp_cli.engine.errors import DdppError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_methods_are_registered_in_the_option_order():
    methods = ("tm", "dc", "dsa", "dm", "cafe", "cafe-dsa", "kip")
    assert distill.list_methods() == distill.METHODS == methods
    assert all(distill.get_method(name).name == name for name in distill.METHODS)


@pytest.mark.parametrize("name", distill.list_methods())
def test_every_method_is_reachable_from_the_command_line(name):
    result = runner.invoke(app, ["distill", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert re.search(rf"\b{name}\b", help_text.split("--method", 1)[1])
    budget = distill.get_method(name).paper_budget
    assert re.search(rf"{name}(/[\w-]+)* {budget}\b", help_text), help_text


def test_an_unknown_method_is_refused_with_the_choices():
    with pytest.raises(
        DdppError, match="one of: tm, dc, dsa, dm, cafe, cafe-dsa, kip \\(got 'x'\\)"
    ):
        distill.get_method("x")
    result = runner.invoke(app, ["distill", "--dataset", "mnist", "--ipc", "1", "--method", "x"])
    assert_one_line_error(result, "--method must be one of: tm, dc, dsa, dm, cafe, cafe-dsa, kip")


@pytest.mark.parametrize("name", distill.list_methods())
def test_every_method_is_documented(name):
    methods_page = (ROOT / "docs" / "methods.md").read_text()
    assert re.search(rf"\b{name}\b", methods_page), name
    info = distill.get_method(name)
    page, _, section = info.doc.partition(", ")
    text = (ROOT / page).read_text()
    assert re.search(rf"^#+ .*{re.escape(section)}", text, re.MULTILINE), info.doc


# The tables the registry replaced, as they were (docs/methods.md; docs/distill.md, Presets).
PAPER_DEFAULTS = {
    "dc": {"iterations": 1000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256, "init": "noise"},
    "dsa": {"iterations": 1000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256, "init": "real"},
    "dm": {"iterations": 20000, "lr_img": 1.0, "batch_real": 256, "init": "real"},
    "cafe": {
        "iterations": 2000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256, "init": "noise",
        "max_image_steps": 100, "max_inner_epochs": 100,
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("method", "dataset", "ipc", "expected"),
    [
        ("tm", "cifar10", 10, {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20,
                               "batch_syn": None, "lr_img": 100.0, "lr_lr": 1e-5,
                               "lr_teacher": 0.001}),
        ("tm", "mnist", 1, {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 10,
                            "batch_syn": None, "lr_img": 100.0, "lr_lr": None,
                            "lr_teacher": None}),
        ("dc", "cifar10", 10, {**PAPER_DEFAULTS["dc"], "outer_loop": 10, "inner_loop": 50}),
        ("dsa", "cifar10", 50, {**PAPER_DEFAULTS["dsa"], "outer_loop": 50, "inner_loop": 10}),
        ("dsa", "cifar10", 2, PAPER_DEFAULTS["dsa"]),
        ("dm", "cifar10", 50, PAPER_DEFAULTS["dm"]),
        ("dm", "cifar10", 100, {**PAPER_DEFAULTS["dm"], "lr_img": 10.0}),
        ("dm", "cifar100", 100, PAPER_DEFAULTS["dm"]),  # DM's readme: 1 for CIFAR-100 up to 125
        ("dm", "cifar100", 125, PAPER_DEFAULTS["dm"]),
        ("dm", "fashionmnist", 100, PAPER_DEFAULTS["dm"]),  # the readme names no other dataset
        ("cafe", "cifar100", 1, PAPER_DEFAULTS["cafe"]),
    ],
)  # fmt: skip
def test_the_registry_presets_are_the_tables_they_replaced(method, dataset, ipc, expected):
    assert distill.method_preset(method, dataset, ipc) == expected
    assert distill.get_method("tm").preset("cifar10", 10, False)["zca"] is True  # the buffer


def test_the_tables_read_the_records():
    assert distill.METHOD_SETTINGS["outer_loop"] == ("dc", "dsa")
    assert distill.METHOD_SETTINGS["buffer"] == ("tm",)
    assert {name: row.method for name, row in compare_engine.method_rows().items()} == {
        "dc": "dc", "dsa": "dsa", "dm": "dm", "cafe": "cafe", "cafe-dsa": "cafe-dsa",
        "kip": "kip", "mtt": "tm",
        "ddpp": "tm", "ddpp-teacher": "tm", "ddpp-learned": "tm",
    }  # fmt: skip
    assert compare_engine.ROWS["dm"].quick == distill.get_method("dm").quick_budget == 200
    assert compare_engine.ROWS["mtt"].changes == {"eps": 0.0}


def test_a_new_record_reaches_every_table(monkeypatch):
    extra = replace(distill.get_method("dm"), name="dm2", label="DM2", settings=("lr_net",))
    monkeypatch.setitem(registry._REGISTRY, "dm2", extra)
    assert "dm2" in distill.list_methods()
    assert registry.method_settings()["lr_net"] == ("dc", "dsa", "cafe", "cafe-dsa", "dm2")
    assert "dm2" in compare_engine.method_rows()
    assert "dm2" in registry.method_help()
    assert "cafe/cafe-dsa 2000, kip 1000, dm2 20000" in registry.iterations_help()


def test_resolve_puts_the_profile_between_the_preset_and_the_options():
    profile = {
        "syn_steps": lambda preset: min(preset, 5),  # a cap of the preset's 30
        "iterations": 60,
        "eval_every": 0,
    }
    resolved = distill.resolve(
        {"dataset": "cifar10", "ipc": 10, "eval_every": 7, "seed": 3}, None, profile=profile
    )
    config, origin = resolved.config, resolved.origin
    assert (config.syn_steps, config.iterations, config.eval_every) == (5, 60, 7)
    assert config.max_start_epoch == 20 and config.seed == 3
    assert origin["syn_steps"] == origin["iterations"] == "profile"
    assert origin["eval_every"] == origin["seed"] == "user"
    assert origin["max_start_epoch"] == origin["zca"] == "preset"
    assert "checkpoint_every" not in origin  # the default
    assert distill.resolve({"dataset": "cifar10", "ipc": 10}, None).config.syn_steps == 30


def test_a_matching_method_resolves_its_profile_cuts():
    resolved = distill.resolve(
        {"dataset": "mnist", "ipc": 10, "method": "dc"}, None, profile={"batch_real": 64}
    )
    assert resolved.config.batch_real == 64 and resolved.origin["batch_real"] == "profile"
    assert resolved.origin["outer_loop"] == "derived" and resolved.origin["lr_img"] == "preset"


def test_the_run_plan_resolves_as_distill_does():
    plan = pipeline.plan_run("mnist", 1, profile="quick", syn_steps=4)
    given = {"dataset": "mnist", "ipc": 1, "eps": 0.1, "zca": False, "test_runs": 0}
    profile = {"iterations": 60, "eval_every": 0, "checkpoint_every": 20, "lr_img": 1000.0}
    alone = distill.resolve(
        {**given, "syn_steps": 4, "max_start_epoch": 3}, None, profile=profile
    ).config
    assert plan.distill == alone
    assert plan.origin["syn_steps"] == "user" and plan.origin["max_start_epoch"] == "profile"


def test_default_run_folders_name_the_method_or_eps(monkeypatch, tmp_path):
    from datetime import datetime

    from ddpp_cli.engine import layout
    from ddpp_cli.engine.distill import DistillConfig
    from ddpp_cli.engine.distill.files import default_run_dir

    monkeypatch.setattr(layout, "data_home", lambda: tmp_path)
    now = datetime(2026, 12, 5, 9, 0, 0)
    tm = DistillConfig.from_preset("fashionmnist", 1)
    assert default_run_dir(tm, now).name == "fashionmnist-ipc1-eps0.1-20261205-090000"
    for method in ("dc", "dsa", "dm", "cafe"):  # no ε: named by the method, never a TypeError
        config = DistillConfig.from_preset("fashionmnist", 1, method=method)
        assert default_run_dir(config, now) == tmp_path / "runs" / (
            f"fashionmnist-ipc1-{method}-20261205-090000"
        )


def test_an_identity_holds_no_other_methods_unset_settings():
    """A method added later (new DistillConfig fields, None for every other method) leaves the
    identity of every other run, and so its resume and its compare row's reuse, as it was."""
    tm = distill.resolve({"dataset": "fashionmnist", "ipc": 1}, None).config
    dc = distill.resolve({"dataset": "fashionmnist", "ipc": 1, "method": "dc"}, None).config
    for name, methods in distill.METHOD_SETTINGS.items():
        if "tm" not in methods:
            assert name not in tm.identity(), name
    assert dc.identity()["batch_real"] == dc.batch_real is not None
    assert "syn_steps" in tm.identity() and "batch_real" not in tm.identity()
