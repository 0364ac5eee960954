"""``ddpp run``: profiles and overrides, buffer reuse, the system data folder, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, make_mnist_folder
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import data, pipeline, trajectory
from ddpp_cli.engine.errors import DdppError

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------- plans


def test_quick_profile_budget():
    plan = pipeline.plan_run("fashionmnist", 1, profile="quick")
    d, b, e = plan.distill, plan.buffer, plan.evaluation
    assert (d.syn_steps, d.expert_epochs, d.max_start_epoch) == (20, 2, 3)
    assert (d.iterations, d.eval_every, d.test_runs, d.lr_img) == (60, 0, 0, 1000.0)
    assert (d.lr_lr, d.lr_teacher, d.eps) == (None, None, 0.1)  # derived when the run starts
    assert (b.experts, b.epochs, b.train_subset, b.test_subset) == (1, 4, 5000, 1000)
    assert b.epochs == d.needed_epochs
    assert (e.runs, e.epochs, plan.test_subset) == (3, 300, 2000)
    assert plan.origin["iterations"] == plan.origin["experts"] == "profile"
    assert "lr_lr" not in plan.origin  # not the profile's nor the user's: the run derives it


def test_paper_profile_is_the_spec():
    plan = pipeline.plan_run("cifar10", 10, eps=0.0, profile="paper")
    d, b, e = plan.distill, plan.buffer, plan.evaluation
    assert (d.syn_steps, d.expert_epochs, d.max_start_epoch, d.lr_img) == (30, 2, 20, 100.0)
    assert (d.lr_lr, d.lr_teacher, d.iterations, d.eval_every) == (1e-5, 0.001, 5000, 500)
    assert (d.eps, d.zca, b.zca) == (0.0, True, True)
    assert (b.experts, b.epochs, b.train_subset, b.test_subset) == (100, 50, None, None)
    assert (e.runs, e.epochs, plan.test_subset) == (5, 1000, None)


def test_quick_keeps_a_smaller_preset_and_zca_lr():
    plan = pipeline.plan_run("tinyimagenet", 1, profile="quick")  # preset N 10, lr_img 10000
    assert (plan.distill.syn_steps, plan.distill.lr_img) == (10, 10000.0)
    zca = pipeline.plan_run("cifar10", 1, profile="quick")  # ZCA: the preset's lr_img
    assert (zca.distill.lr_img, zca.distill.max_start_epoch, zca.buffer.epochs) == (100.0, 2, 3)


def test_overrides_win_and_are_marked():
    plan = pipeline.plan_run(
        "mnist", 2, profile="quick", iterations=7, experts=3, buffer_epochs=9, runs=1,
        epochs=11, test_subset=None, lr_img=50.0, batch_syn=0, train_subset=200,
    )  # fmt: skip
    assert (plan.distill.iterations, plan.distill.lr_img, plan.distill.batch_syn) == (7, 50.0, None)
    assert (plan.buffer.experts, plan.buffer.epochs, plan.buffer.train_subset) == (3, 9, 200)
    assert plan.distill.train_subset == 200
    assert (plan.evaluation.runs, plan.evaluation.epochs, plan.test_subset) == (1, 11, 2000)
    assert plan.origin["iterations"] == plan.origin["experts"] == "user"
    assert plan.origin["syn_steps"] == "profile"


def test_bad_plans_are_refused():
    with pytest.raises(DdppError, match="unknown profile 'fast'"):
        pipeline.plan_run("mnist", 1, profile="fast")
    with pytest.raises(DdppError, match="--buffer-epochs 2 is too short"):
        pipeline.plan_run("mnist", 1, profile="quick", buffer_epochs=2)
    with pytest.raises(DdppError, match="--eps must be in"):
        pipeline.plan_run("mnist", 1, eps=1.0)
    with pytest.raises(DdppError, match="unknown dataset"):
        pipeline.plan_run("imagenet", 1)


# ----------------------------------------------------------------------------------- buffers


def test_buffer_folders_by_profile():
    paper = pipeline.plan_run("cifar10", 1, profile="paper").buffer
    base = trajectory.default_buffer_dir("cifar10", "convnet", True)
    assert pipeline.buffer_folder(paper, "paper") == base
    quick = pipeline.plan_run("cifar10", 1, profile="quick").buffer
    assert pipeline.buffer_folder(quick, "quick") == base.with_name(base.name + "-quick")
    other = pipeline.plan_run("cifar10", 1, profile="quick", train_subset=123).buffer
    name = pipeline.buffer_folder(other, "quick").name
    assert name.startswith("cifar10-convnet-zca-") and len(name) == len("cifar10-convnet-zca-") + 8
    assert pipeline.buffer_folder(other, "quick") == pipeline.buffer_folder(other, "quick")


def _fake_buffer(folder: Path, experts: int, *, epochs: int = 4, kind: str = "normalize",
                 dataset: str = "fashionmnist", arch: str = "convnet") -> Path:  # fmt: skip
    folder.mkdir(parents=True)
    manifest = {
        "format": trajectory.MANIFEST_FORMAT, "dataset": dataset, "arch": arch, "epochs": epochs,
        "config": {"image_size": None}, "preprocessing": {"kind": kind},
    }  # fmt: skip
    (folder / trajectory.MANIFEST_NAME).write_text(json.dumps(manifest))
    for index in range(experts):
        trajectory.expert_path(folder, index).write_bytes(b"")
    return folder


def test_reusable_buffer_is_the_fitting_one_with_most_experts(tmp_path):
    config = pipeline.plan_run("fashionmnist", 1, profile="quick", experts=2).buffer
    _fake_buffer(tmp_path / "a-too-few", 1)
    _fake_buffer(tmp_path / "b-short", 5, epochs=3)
    _fake_buffer(tmp_path / "c-zca", 5, kind="zca")
    _fake_buffer(tmp_path / "d-other-arch", 5, arch="alexnet")
    _fake_buffer(tmp_path / "e-mnist", 5, dataset="mnist")
    (tmp_path / "f-not-a-buffer").mkdir()
    assert pipeline.find_reusable_buffer(config, 4, tmp_path) is None
    _fake_buffer(tmp_path / "g-fits", 2, epochs=50)
    _fake_buffer(tmp_path / "h-fits-more", 3)
    assert pipeline.find_reusable_buffer(config, 4, tmp_path) == tmp_path / "h-fits-more"
    assert pipeline.find_reusable_buffer(config, 4, tmp_path / "missing") is None


# ---------------------------------------------------------------------- system data folders


def test_system_folder_is_used_when_no_root_is_given(tmp_path, monkeypatch):
    system = make_mnist_folder(tmp_path / "usr-share-datasets-fashion-mnist")
    monkeypatch.setitem(data.SYSTEM_FOLDERS, "fashionmnist", (tmp_path / "absent", system))
    data.clear_cache()
    assert data.source_folder("fashionmnist") == system
    train = data.load("fashionmnist", download=False)
    assert len(train) == 100
    # An explicit root is never replaced by the system folder.
    with pytest.raises(DdppError, match="not found"):
        data.load("fashionmnist", tmp_path / "empty", download=False)
    # Files in the ddpp data folder win over the system folder.
    own = make_mnist_folder(data.default_root() / "fashionmnist", train_per_class=2)
    data.clear_cache()
    assert data.source_folder("fashionmnist") == own
    assert len(data.load("fashionmnist", download=False)) == 20
    data.clear_cache()


def test_missing_data_message_names_the_system_folder(monkeypatch, tmp_path):
    monkeypatch.setitem(data.SYSTEM_FOLDERS, "fashionmnist", (tmp_path / "nowhere",))
    data.clear_cache()
    with pytest.raises(DdppError, match="nowhere, from Debian's dataset-fashion-mnist"):
        data.load("fashionmnist", download=False)
    data.clear_cache()


def test_source_folder_of_other_sets(tmp_path):
    assert data.source_folder("cifar10", tmp_path) == tmp_path.resolve() / "cifar10"
    make_mnist_folder(tmp_path / "mnist")
    assert data.source_folder("mnist", tmp_path) == tmp_path.resolve() / "mnist"


# ------------------------------------------------------------------------------- end to end

TINY = [
    "--profile", "quick", "--no-download", "--device", "cpu", "--image-size", 8,
    "--train-subset", 80, "--iterations", 3, "--syn-steps", 2, "--expert-epochs", 1,
    "--max-start-epoch", 2, "--lr-img", 100, "--lr-lr", 1e-7, "--runs", 2, "--epochs", 3,
    "--test-subset", 20,
]  # fmt: skip


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_run_end_to_end_then_reuses_the_buffer(tiny_mnist, tmp_path):
    first = tmp_path / "run1"
    result = invoke("run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist,
                    "--out", first, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[1/5] buffer: training into" in result.output
    assert f"data from {tiny_mnist.resolve()}" in result.output
    for text in ("distilled (DDPP, ε 0.1)", "random real images", "gain", "protocol:", "time:"):
        assert text in result.output
    for name in ("grid.png", "curves.png", "run.json", "distilled.safetensors", "metrics.jsonl"):
        assert (first / name).is_file(), name
    for name in ("grid.png", "curves.png", "run.json"):
        assert str(first / name) in result.output, name
    summary = json.loads((first / "run.json").read_text())
    assert summary["format"] == pipeline.SUMMARY_FORMAT
    assert (
        len(summary["distilled"]["accuracies"])
        == len(summary["random_baseline"]["accuracies"])
        == 2
    )
    assert summary["distilled"]["protocol"]["test_size"] == 20
    assert summary["random_baseline"]["protocol"]["test_size"] == 20
    assert summary["gain"] == pytest.approx(
        summary["distilled"]["mean"] - summary["random_baseline"]["mean"]
    )
    buffer = Path(summary["buffer"])
    assert buffer.parent == trajectory.default_buffer_dir("mnist", "convnet", False).parent

    second = tmp_path / "run2"
    result = invoke("run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist,
                    "--out", second, "--json", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["buffer"] == str(buffer) and payload["buffer_reused"] is True
    # Same seeds, same buffer: the same set and the same accuracies.
    assert payload["distilled"]["accuracies"] == summary["distilled"]["accuracies"]
    assert payload["random_baseline"]["accuracies"] == summary["random_baseline"]["accuracies"]


def test_run_bad_input_is_one_line(tiny_mnist, tmp_path):
    for args, fragment in (
        (["--ipc", 0], "--ipc must be at least 1"),
        (["--ipc", 1, "--profile", "fast"], "unknown profile 'fast'"),
        (["--ipc", 1, "--eps", 2], "--eps must be in [0, 1)"),
        (["--ipc", 1, "--arch", "vit"], "unknown architecture 'vit'"),
    ):
        result = invoke("run", "--dataset", "mnist", "--data-dir", tiny_mnist, "--no-download",
                        "--out", tmp_path / "r", *args)  # fmt: skip
        assert_one_line_error(result, fragment)
    assert not (tmp_path / "r").exists()


def test_auto_lr_derives_a_paper_rows_step_sizes_only_when_asked():
    paper = pipeline.plan_run("cifar10", 1, profile="quick").distill
    assert (paper.lr_teacher, paper.lr_lr) == (0.01, 1e-7)
    derived = pipeline.plan_run("cifar10", 1, profile="quick", auto_lr=True).distill
    assert (derived.lr_teacher, derived.lr_lr) == (None, None)
