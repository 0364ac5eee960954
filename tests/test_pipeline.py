"""``ddpp run``: profiles and overrides, buffer reuse, the system data folder, end to end."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import assert_one_line_error, make_mnist_folder
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import data, pipeline
from ddpp_cli.engine.buffer import reuse
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.events import Notice
from ddpp_cli.engine.layout import MANIFEST_NAME

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


QUICK_SUBSETS = (5000, 1000)  # the quick profile's buffer (train_subset, test_subset)


def test_buffer_folders_by_profile():
    paper = pipeline.plan_run("cifar10", 1, profile="paper").buffer
    base = buffer_engine.default_buffer_dir("cifar10", "convnet", True)
    assert reuse.buffer_folder(paper, "paper") == base
    quick = pipeline.plan_run("cifar10", 1, profile="quick").buffer
    assert reuse.buffer_folder(quick, "quick", QUICK_SUBSETS) == base.with_name(
        base.name + "-quick"
    )
    other = pipeline.plan_run("cifar10", 1, profile="quick", train_subset=123).buffer
    name = reuse.buffer_folder(other, "quick", QUICK_SUBSETS).name
    assert name.startswith("cifar10-convnet-zca-") and len(name) == len("cifar10-convnet-zca-") + 8
    # Other settings: the first 8 hex digits of the SHA-256 of their identity as sorted JSON, so
    # the name does not depend on the profile asking, and other settings get another folder.
    identity = json.dumps(other.identity(), sort_keys=True).encode()
    assert name == f"cifar10-convnet-zca-{hashlib.sha256(identity).hexdigest()[:8]}"
    assert reuse.buffer_folder(other, "paper").name == name
    another = pipeline.plan_run("cifar10", 1, profile="quick", train_subset=124).buffer
    assert reuse.buffer_folder(another, "quick", QUICK_SUBSETS).name != name


QUICK_FASHION = pipeline.plan_run("fashionmnist", 1, profile="quick", experts=2).buffer


def _fake_buffer(folder: Path, experts: int, *, epochs: int = 4, kind: str = "normalize",
                 dataset: str = "fashionmnist", arch: str = "convnet",
                 **config) -> Path:  # fmt: skip
    """A buffer folder as train_buffer writes it (manifest with the settings' identity), with
    empty expert files: enough for the search, which reads manifests and counts files."""
    folder.mkdir(parents=True)
    identity = {**QUICK_FASHION.identity(), "epochs": epochs, "zca": kind == "zca", **config}
    manifest = {
        "format": buffer_engine.MANIFEST_FORMAT, "dataset": dataset, "arch": arch, "epochs": epochs,
        "config": {**identity, "dataset": dataset, "arch": arch},
        "preprocessing": {"kind": kind},
    }  # fmt: skip
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    for index in range(experts):
        buffer_engine.expert_path(folder, index).write_bytes(b"")
    return folder


def test_reusable_buffer_is_the_fitting_one_with_most_experts(tmp_path):
    config = QUICK_FASHION
    _fake_buffer(tmp_path / "a-too-few", 1)
    _fake_buffer(tmp_path / "b-short", 5, epochs=3)
    _fake_buffer(tmp_path / "c-zca", 5, kind="zca")
    _fake_buffer(tmp_path / "d-other-arch", 5, arch="alexnet")
    _fake_buffer(tmp_path / "e-mnist", 5, dataset="mnist")
    (tmp_path / "f-not-a-buffer").mkdir()
    assert reuse.find_reusable_buffer(config, 4, tmp_path) is None
    _fake_buffer(tmp_path / "g-fits", 2, epochs=50)
    _fake_buffer(tmp_path / "h-fits-more", 3)
    assert reuse.find_reusable_buffer(config, 4, tmp_path) == tmp_path / "h-fits-more"
    assert reuse.find_reusable_buffer(config, 4, tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"arch": "alexnet"}, "arch: 'alexnet' there vs 'convnet' now"),
        ({"kind": "zca"}, "zca: True there vs False now"),
        ({"image_size": 16}, "image_size: 16 there vs None now"),
        ({"lr": 0.02}, "lr: 0.02 there vs 0.01 now"),
        ({"batch_size": 128}, "batch_size: 128 there vs 256 now"),
        ({"dsa_strategy": "none"}, "dsa_strategy: 'none' there vs"),
        ({"seed": 1}, "seed: 1 there vs 0 now"),
        ({"train_subset": 100}, "train_subset: 100 there vs 5000 now"),
        ({"epochs": 3}, "epochs: 3 there vs at least 4 needed"),
        ({"experts": 1}, "experts: 1 there vs 2 needed"),
        ({"imported": True}, "lr: None there vs 0.01 now"),  # MTT's: settings unknown
    ],
)
def test_a_buffer_differing_in_any_training_setting_is_not_reused(tmp_path, changes, expected):
    changes = dict(changes)
    experts = changes.pop("experts", 3)
    folder = _fake_buffer(tmp_path / "buffers" / "x", experts, **changes)
    if changes.get("imported"):
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        manifest["config"] = {"imported_from": "/mtt/fashion/ConvNet", "dataset": "fashionmnist",
                              "arch": "convnet", "zca": False, "image_size": None}  # fmt: skip
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    search = reuse.search_buffers(QUICK_FASHION, 4, tmp_path / "buffers")
    assert search.found is None
    assert search.nearest[0] == folder and expected in search.nearest[1]
    # the same buffer with matching settings (more epochs, another test subset) is reused
    _fake_buffer(tmp_path / "buffers" / "y", 2, epochs=9, test_subset=7)
    assert reuse.find_reusable_buffer(QUICK_FASHION, 4, tmp_path / "buffers") == (
        tmp_path / "buffers" / "y"
    )


def test_a_new_buffer_never_goes_into_a_folder_of_other_settings(tmp_path):
    folder = reuse.buffer_folder(QUICK_FASHION, "quick", QUICK_SUBSETS)
    # absent: used
    assert reuse.training_folder(QUICK_FASHION, "quick", subsets=QUICK_SUBSETS) == folder
    _fake_buffer(folder, 1, lr=0.5)  # e.g. made by 'ddpp buffer --lr 0.5 --out <that folder>'
    other = reuse.training_folder(QUICK_FASHION, "quick", subsets=QUICK_SUBSETS)
    assert other.parent == folder.parent and other.name.startswith(folder.name + "-")
    _fake_buffer(other, 1)  # same settings, fewer experts: extended in place
    assert reuse.training_folder(QUICK_FASHION, "quick", subsets=QUICK_SUBSETS) == other


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


@pytest.mark.slow
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
    assert (
        summary["selection"] == summary["distilled"]["selection"] == "validation split, tested once"
    )
    buffer = Path(summary["buffer"])
    assert buffer.parent == buffer_engine.default_buffer_dir("mnist", "convnet", False).parent

    second = tmp_path / "run2"
    result = invoke("run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist,
                    "--out", second, "--json", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["buffer"] == str(buffer) and payload["buffer_reused"] is True
    # Same seeds, same buffer: the same set and the same accuracies.
    assert payload["distilled"]["accuracies"] == summary["distilled"]["accuracies"]
    assert payload["random_baseline"]["accuracies"] == summary["random_baseline"]["accuracies"]

    # Another training setting: a new buffer in a new folder, and the run says why.
    third = tmp_path / "run3"
    other = [str(a) for a in TINY]
    other[other.index("--train-subset") + 1] = "60"
    result = invoke("run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist,
                    "--out", third, *other)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"not reusing {buffer} (train_subset: 80 there vs 60 now)" in " ".join(
        result.output.split()
    )
    payload = json.loads((third / "run.json").read_text())
    assert payload["buffer_reused"] is False and payload["buffer"] != str(buffer)
    assert sorted(buffer_engine.expert_files(buffer)) == [0]  # the old buffer is untouched


def test_run_into_a_folder_of_other_files_is_refused_before_any_work(tiny_mnist, tmp_path):
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "draft.tex").write_text("mine")
    result = invoke("run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist,
                    "--out", folder, *TINY)  # fmt: skip
    assert_one_line_error(result, str(folder), "draft.tex", "not a ddpp run")
    assert not buffer_engine.default_buffer_dir("mnist", "convnet", False).parent.exists()
    assert [p.name for p in folder.iterdir()] == ["draft.tex"]


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


def test_a_buffer_named_with_buffer_is_used_and_a_difference_is_noted(tmp_path):
    plan = pipeline.plan_run("fashionmnist", 1, profile="quick", experts=2)
    events = []
    stages = pipeline._StageClock(events.append)
    mine = _fake_buffer(tmp_path / "mine", 2, seed=7)
    folder, reused = pipeline._buffer_stage(plan, mine, stages, events.append, {}, {})
    assert (folder, reused) == (mine, True)
    notes = [e.message for e in events if isinstance(e, Notice)]
    assert notes == [f"{mine} differs from the run's settings (seed: 7 there vs 0 now); using it "
                     "as --buffer asks."]  # fmt: skip
    events.clear()
    same = _fake_buffer(tmp_path / "same", 2)
    assert pipeline._buffer_stage(plan, same, stages, events.append, {}, {}) == (same, True)
    assert not [e for e in events if isinstance(e, Notice)]


def test_auto_lr_derives_a_paper_rows_step_sizes_only_when_asked():
    paper = pipeline.plan_run("cifar10", 1, profile="quick").distill
    assert (paper.lr_teacher, paper.lr_lr) == (0.01, 1e-7)
    derived = pipeline.plan_run("cifar10", 1, profile="quick", auto_lr=True).distill
    assert (derived.lr_teacher, derived.lr_lr) == (None, None)


def test_a_folder_datasets_buffer_is_reused_only_for_the_same_folder(tmp_path):
    # Two image folders of the same shape and settings: the second must not train on the first's
    # experts (ddpp buffer records where a folder dataset came from).
    config = replace(QUICK_FASHION, dataset="imagefolder")
    first, second = tmp_path / "xrays-a", tmp_path / "xrays-b"
    folder = _fake_buffer(tmp_path / "buffers" / "a", 3, dataset="imagefolder")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["data"] = {"source": str(first.resolve())}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert reuse.search_buffers(config, 4, tmp_path / "buffers", first).found == folder
    search = reuse.search_buffers(config, 4, tmp_path / "buffers", second)
    assert search.found is None
    assert search.nearest[0] == folder
    assert search.nearest[1] == f"data: {str(first.resolve())!r} there vs {str(second)!r} now"
    # a named dataset is the same data wherever its files are
    manifest = buffer_engine.read_manifest(folder)
    assert reuse.buffer_difference(manifest, QUICK_FASHION, 4, second) == (
        "dataset: 'imagefolder' there vs 'fashionmnist' now"
    )


def test_a_new_folder_dataset_buffer_never_goes_into_another_folders_buffer(tmp_path):
    config = replace(QUICK_FASHION, dataset="imagefolder")
    folder = reuse.buffer_folder(config, "quick", QUICK_SUBSETS)
    _fake_buffer(folder, 1, dataset="imagefolder")  # same settings, made from folder a
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["data"] = {"source": str(tmp_path / "a")}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    extended = reuse.training_folder(config, "quick", tmp_path / "a", QUICK_SUBSETS)
    assert extended == folder
    other = reuse.training_folder(config, "quick", tmp_path / "b", QUICK_SUBSETS)
    assert other != folder and other.name.startswith(folder.name + "-")


@pytest.mark.slow
def test_run_over_a_killed_buffer_refuses_before_any_work(tiny_mnist, tmp_path):
    from conftest import kill_ddpp_when

    buffer = tmp_path / "killed"
    args = [
        "buffer", "--dataset", "mnist", "--data-dir", tiny_mnist, "--no-download", "--out",
        buffer, "--device", "cpu", "--batch-size", 64, "--experts", 3, "--epochs", 1,
        "--image-size", 8, "--train-subset", 80, "--quiet",
    ]  # fmt: skip
    kill_ddpp_when(  # after the first of three experts, by construction
        args, display="buffer.BufferDisplay", message="expert 0 done",
        when="isinstance(event, buffer_engine.ExpertFinished) and event.record.index == 0",
    )  # fmt: skip
    assert sorted(buffer_engine.expert_files(buffer)) == [0]
    out = tmp_path / "run"
    result = invoke("run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist,
                    "--buffer", buffer, "--out", out, *TINY)  # fmt: skip
    assert_one_line_error(result, str(buffer), "unfinished: 1 of 3 experts", "ddpp buffer")
    assert not out.exists()  # nothing distilled from part of a buffer
    assert sorted(buffer_engine.expert_files(buffer)) == [0]


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (("--ipc", 9), ("--ipc 9 is more than class", "(8 training images)", "--ipc 8 or less")),
        (("--ipc", 1, "--train-subset", 5), ("--train-subset 5 cannot cover the 10 classes",)),
        (("--ipc", 1, "--train-subset", 1000), ("--train-subset 1000 is more than the 100",)),
        (("--ipc", 8, "--val-size", 20, "--eval-every", 1), ("--ipc 8 is more than class",
                                                              "after holding out 20")),
    ],
)  # fmt: skip
def test_run_refuses_inputs_that_cannot_work_before_any_buffer_trains(
    tiny_mnist, tmp_path, options, fragments
):
    out = tmp_path / "run"
    args = [a for a in TINY if a not in ("--train-subset", 80)]  # TINY's subset: given here
    if "--train-subset" not in options:
        args += ["--train-subset", 80]
    result = invoke("run", "--dataset", "mnist", "--data-dir", tiny_mnist, "--out", out,
                    *options, *args)  # fmt: skip
    assert_one_line_error(result, *fragments)
    assert not buffer_engine.default_buffer_dir("mnist", "convnet", False).parent.exists()
    assert not out.exists()


@pytest.mark.slow
def test_a_rerun_takes_every_evaluation_network_from_the_runs_records(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist, "--out", out,
            *TINY, "--json"]  # fmt: skip
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in (out / "evaluations").iterdir())  # records kept by default
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    before, after = json.loads(first.stdout), json.loads(again.stdout)
    for stage in ("distilled", "random_baseline"):
        assert before[stage]["provenance"]["reused_runs"] == []
        assert after[stage]["provenance"]["reused_runs"] == [0, 1]  # TINY: --runs 2
        assert after[stage]["accuracies"] == before[stage]["accuracies"]
