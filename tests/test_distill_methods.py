"""``ddpp distill --method dc|dsa|dm|cafe`` (issue 16): the wiring the other methods share with tm.

The losses themselves are pinned in test_gradient_matching, test_distribution_matching and
test_cafe; these tests are about presets and their sources, refusals, metadata, bit-for-bit
resume (a real kill for dsa, Ctrl-C in process for each method), validation, guards, faults and
visualize, on the tiny MNIST folder resized to 8×8.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, assert_same_run, ctrl_c_after, kill_ddpp_when
from rich.console import Console
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.commands._distilling import settings_table
from ddpp_cli.engine import distill, distilled, faults, store, visualize
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
OTHER_METHODS = ("dc", "dsa", "dm", "cafe")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def small(method: str, **changes) -> distill.DistillConfig:
    """Three iterations of ``method`` on 8×8 images, 4 real images per class and step; dc runs
    two outer steps (so its inner loop trains the network), cafe at most 2 steps/epochs."""
    extra = {
        "dc": {"outer_loop": 2, "inner_loop": 1},
        "cafe": {"max_image_steps": 2, "max_inner_epochs": 2},
    }.get(method, {})
    values = {
        "iterations": 3, "image_size": 8, "batch_real": 4, "eval_every": 2, "eval_runs": 1,
        "eval_epochs": 1, "test_runs": 0, "checkpoint_every": 1, **extra, **changes,
    }  # fmt: skip
    return distill.DistillConfig.from_preset("mnist", 1, method=method, **values)


def run(config, folder: Path, data: Path, **kwargs) -> distill.DistillSummary:
    return distill.distill(config, folder, data_root=data, download=False, **kwargs)


def cli_args(data: Path, out: Path, method: str, *extra: object) -> list[object]:
    return [
        "distill", "--dataset", "mnist", "--ipc", 1, "--method", method, "--data-dir", data,
        "--no-download", "--out", out, "--image-size", 8, "--batch-real", 4, "--iterations", 3,
        "--eval-every", 2, "--eval-runs", 1, "--eval-epochs", 1, "--test-runs", 0,
        "--checkpoint-every", 1, "--quiet", *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------- presets and config


@pytest.mark.parametrize(
    ("method", "ipc", "expected"),
    [
        ("dc", 10, {"iterations": 1000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256,
                    "init": "noise", "outer_loop": 10, "inner_loop": 50}),
        ("dsa", 1, {"iterations": 1000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256,
                    "init": "real", "outer_loop": 1, "inner_loop": 1}),
        ("dm", 10, {"iterations": 20000, "lr_img": 1.0, "batch_real": 256, "init": "real"}),
        # DM's readme.md sets lr_img 10 from IPC 100 for CIFAR-10 only; elsewhere main_DM's 1.
        ("dm", 100, {"iterations": 20000, "lr_img": 1.0, "batch_real": 256, "init": "real"}),
        ("cafe", 1, {"iterations": 2000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256,
                     "init": "noise", "max_image_steps": 100, "max_inner_epochs": 100}),
    ],
)  # fmt: skip
def test_each_method_starts_from_its_papers_defaults_with_their_sources(method, ipc, expected):
    resolved = distill.resolve(
        {"dataset": "fashionmnist", "ipc": ipc, "method": method, "eval_every": 7}, None
    )
    config, origin = resolved.config, resolved.origin
    assert {name: getattr(config, name) for name in expected} == expected
    for name in expected:
        loops = name in ("outer_loop", "inner_loop")
        assert origin[name] == ("derived" if loops else "preset"), name
    assert origin["eval_every"] == "user" and origin["method"] == "user"
    for name in ("syn_steps", "expert_epochs", "max_start_epoch", "lr_lr", "lr_teacher", "eps"):
        assert getattr(config, name) is None  # tm's settings are not carried
    assert config.identity()["method"] == method  # a resume cannot switch methods


def test_the_settings_table_shows_the_methods_settings_and_where_they_came_from():
    resolved = distill.resolve(
        {"dataset": "mnist", "ipc": 10, "method": "dsa", "batch_real": 64}, None
    )
    event = distill.DistillStarted(
        folder=Path("run"), config=resolved.config, buffer=None, experts=0, buffer_epochs=0,
        num_params=1, train_size=90, val_size=10, test_size=50, preprocessing="normalize",
        start_iteration=0, resumed=False, device="cpu",
    )  # fmt: skip
    console = Console(record=True, width=200)
    console.print(settings_table(event, resolved.origin))
    rows = {
        cells[1].strip(): (cells[2].strip(), cells[3].strip())
        for line in console.export_text().splitlines()
        if len(cells := line.split("│")) == 5
    }
    assert rows["method"] == ("dsa", "user")
    assert rows["lr_img"] == ("0.1", "preset")
    assert rows["iterations"] == ("1000", "preset")
    assert rows["batch_real"] == ("64", "user")
    assert rows["outer_loop"] == ("10", "derived") and rows["inner_loop"] == ("50", "derived")
    assert rows["lr_net"] == ("0.01", "preset")
    assert rows["eval_every"] == ("500", "default")
    for absent in ("syn_steps", "eps", "lr_teacher", "batch_syn", "unroll", "max_image_steps"):
        assert absent not in rows
    assert "buffer" not in rows


def test_the_engine_config_refuses_settings_of_another_method():
    tm = distill.DistillConfig.from_preset("mnist", 1)
    with pytest.raises(DdppError, match="--syn-steps does not apply to --method dsa"):
        replace(tm, method="dsa")  # tm's preset is not a dsa setting: never silently kept
    with pytest.raises(DdppError, match="--eps does not apply to --method dm"):
        distill.DistillConfig.from_preset("mnist", 1, method="dm", eps=0.1)
    with pytest.raises(DdppError, match="--unroll does not apply to --method cafe"):
        distill.DistillConfig.from_preset("mnist", 1, method="cafe", unroll="memory")
    with pytest.raises(DdppError, match="--lr-net does not apply to --method tm"):
        replace(tm, lr_net=0.01)
    with pytest.raises(DdppError, match="--outer-loop and --inner-loop for IPC 3"):
        distill.DistillConfig.from_preset("mnist", 3, method="dc")
    with pytest.raises(DdppError, match="ZCA is only available with --method tm"):
        distill.DistillConfig.from_preset("mnist", 1, method="dm", zca=True)
    with pytest.raises(DdppError, match="use --arch convnet"):
        distill.DistillConfig.from_preset("mnist", 1, method="cafe", arch="vgg11")
    with pytest.raises(
        DdppError, match="--method must be one of: tm, dc, dsa, dm, cafe, cafe-dsa, kip"
    ):
        distill.DistillConfig.from_preset("mnist", 1, method="krr")
    assert distill.METHODS == ("tm", "dc", "dsa", "dm", "cafe", "cafe-dsa", "kip")


def test_with_method_keeps_the_shared_settings_and_takes_the_methods_preset():
    tm = distill.DistillConfig.from_preset("cifar10", 1, zca=True, seed=3, eval_every=9)
    dsa = tm.with_method("dsa", iterations=5)
    assert (dsa.method, dsa.iterations, dsa.seed, dsa.eval_every) == ("dsa", 5, 3, 9)
    assert (dsa.lr_img, dsa.init, dsa.syn_steps, dsa.eps, dsa.zca) == (
        0.1,
        "real",
        None,
        None,
        None,
    )
    back = dsa.with_method("tm")
    assert back.syn_steps == tm.syn_steps and back.lr_img == tm.lr_img and back.seed == 3


# ------------------------------------------------------------------------- refusals (CLI)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--method", "dm", "--eps", "0.1"), "--eps does not apply to --method dm"),
        (("--method", "dsa", "--auto-lr"), "--auto-lr does not apply to --method dsa"),
        (("--method", "dc", "--buffer", "somewhere"), "--buffer does not apply to --method dc"),
        (("--method", "dc", "--unroll", "graph"), "--unroll does not apply to --method dc"),
        (("--method", "dm", "--no-compile"), "--compile does not apply to --method dm"),
        (("--method", "cafe", "--syn-steps", "3"), "--syn-steps does not apply to --method cafe"),
        (("--method", "dm", "--lr-net", "0.1"), "--lr-net does not apply to --method dm"),
        (("--method", "cafe", "--inner-loop", "2"), "--inner-loop does not apply to --method cafe"),
        (("--method", "dsa", "--max-image-steps", "2"), "--max-image-steps does not apply to"),
        (("--batch-real", "8"), "--batch-real does not apply to --method tm"),
        (("--method", "cafe", "--arch", "alexnet"), "use --arch convnet"),
        (("--method", "gm"), "--method must be one of: tm, dc, dsa, dm, cafe, cafe-dsa, kip"),
    ],
)
def test_options_of_another_method_are_refused_in_one_line(tiny_mnist, tmp_path, extra, fragment):
    args = [
        "distill", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist, "--no-download",
        "--out", tmp_path / "run", *extra,
    ]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_resume_takes_the_method_from_the_checkpoint_and_refuses_its_inapplicable_options(
    tiny_mnist, tmp_path
):
    out = tmp_path / "run"
    assert invoke(*cli_args(tiny_mnist, out, "dm", "--iterations", 1)).exit_code == 0
    refused = invoke("distill", "--resume", out, "--eps", "0.2", "--data-dir", tiny_mnist)
    assert refused.exit_code == 2
    assert_one_line_error(refused, "--eps does not apply to --method dm")
    switched = invoke("distill", "--resume", out, "--method", "dsa", "--data-dir", tiny_mnist)
    assert switched.exit_code == 2
    assert_one_line_error(switched, "other settings", "method")


def test_torchrun_is_refused_for_the_other_methods(tiny_mnist):
    with pytest.raises(DdppError, match="torchrun is only supported for --method tm"):
        distill.set_up_method(
            small("dm"), data_root=tiny_mnist, download=False, device=torch.device("cpu"),
            world=World(rank=0, size=2),
        )  # fmt: skip


# --------------------------------------------------------------- data, metadata and evaluation


def test_the_real_pools_exclude_the_validation_images(tiny_mnist):
    setup = distill.set_up_method(
        small("dsa", val_size=20), data_root=tiny_mnist, download=False,
        device=torch.device("cpu"),
    )  # fmt: skip
    train = setup.prepared.train
    assert setup.buffer is None and setup.student is None
    pools = torch.cat(setup.real_by_class).flatten(1)
    assert len(pools) == len(setup.train_idx) == len(train.labels) - 20
    validation = train.images[setup.val_idx].flatten(1)
    assert bool((torch.cdist(validation, pools) > 1e-6).all())  # no validation image drawn
    for label, pool in enumerate(setup.real_by_class):
        assert len(pool) == int((train.labels[setup.train_idx] == label).sum())


def test_the_set_records_its_method_and_settings_and_no_learned_lr(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    result = invoke(*cli_args(tiny_mnist, out, "dsa", "--iterations", 2, "--test-runs", 1))
    assert result.exit_code == 0, result.output
    chosen = distilled.load(out / distill.BEST_NAME)
    assert chosen.lr is None  # DSA learns no step size: evaluation uses its default
    settings = chosen.settings
    assert (settings["method"], settings["lr_img"], settings["batch_real"]) == ("dsa", 0.1, 4)
    assert (settings["outer_loop"], settings["inner_loop"], settings["syn_steps"]) == (1, 1, None)
    assert settings["learned_lr"] is False and "buffer" not in settings
    assert store.read_metadata(out / distill.DISTILLED_NAME)["format"] == store.DISTILLED_FORMAT
    checkpoint = store.read(out / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    assert checkpoint.metadata["method"] == "dsa" and checkpoint.metadata["buffer"] is None
    assert "lr" not in checkpoint.tensors and "expert_order" not in checkpoint.tensors
    summary = json.loads((out / distill.SUMMARY_NAME).read_text())
    assert summary["method"] == "dsa" and summary["final_lr"] is None
    assert summary["test"]["protocol"]["lr_source"] == "default"

    evaluated = invoke(
        "evaluate", out, "--data-dir", tiny_mnist, "--no-download", "--runs", 1, "--epochs", 1,
        "--json",
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    protocol = json.loads(evaluated.stdout)["protocol"]
    assert (protocol["lr"], protocol["lr_source"]) == (0.01, "default")


def test_validation_picks_the_best_set_and_metrics_hold_the_methods_numbers(tiny_mnist, tmp_path):
    config = small("cafe", iterations=2, eval_every=1, snapshot_every=1)
    summary = run(config, tmp_path, tiny_mnist)
    snapshots = sorted(p.name for p in (tmp_path / distill.SNAPSHOTS_DIRNAME).iterdir())
    assert snapshots == [f"iter_00000{i}.safetensors" for i in range(3)]
    records = [
        json.loads(line) for line in (tmp_path / distill.METRICS_NAME).read_text().splitlines()
    ]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        assert {"loss", "image_steps", "inner_epochs", "capped", "lr_img", "seconds"} <= set(record)
        assert "pruned_fraction" not in record and "lr" not in record
        assert record["image_steps"] == 2 and record["capped"] is True  # the caps were honoured
    best = max(records, key=lambda r: (r["val_accuracy"], -r["iteration"]))
    assert summary.best_iteration == best["iteration"]
    assert store.read_metadata(tmp_path / distill.BEST_NAME)["iteration"] == best["iteration"]
    assert summary.final_lr is None and summary.pruned_fraction == {}


# ------------------------------------------------------------------------- resume bit for bit


@pytest.mark.slow
@pytest.mark.parametrize("method", OTHER_METHODS)
def test_ctrl_c_and_resume_continue_bit_for_bit(method, tiny_mnist, tmp_path):
    config = small(method)
    run(config, tmp_path / "straight", tiny_mnist)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run(config, interrupted, tiny_mnist, on_event=ctrl_c_after(3))
    assert store.read_metadata(interrupted / distill.CHECKPOINT_NAME)["iteration"] == 2
    events = []
    run(config, interrupted, tiny_mnist, on_event=events.append)
    started = next(e for e in events if isinstance(e, distill.DistillStarted))
    assert started.resumed and started.start_iteration == 2
    assert_same_run(tmp_path / "straight", interrupted)


@pytest.mark.slow
def test_a_killed_dsa_run_resumes_bit_for_bit(tiny_mnist, tmp_path):
    args = cli_args(tiny_mnist, tmp_path / "straight", "dsa", "--outer-loop", 2, "--inner-loop", 2)
    assert invoke(*args).exit_code == 0
    killed = tmp_path / "killed"
    kill_ddpp_when(
        cli_args(tiny_mnist, killed, "dsa", "--outer-loop", 2, "--inner-loop", 2),
        display="distill.DistillDisplay",
        when="type(event).__name__ == 'IterationFinished' and event.iteration == 3",
        message="in iteration 3",
    )
    assert store.read_metadata(killed / distill.CHECKPOINT_NAME)["iteration"] == 2
    resumed = invoke("distill", "--resume", killed, "--data-dir", tiny_mnist, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(tmp_path / "straight", killed)


# ------------------------------------------------------------------------- guards and faults


def test_a_diverging_run_stops_with_the_last_good_set(tiny_mnist, tmp_path):
    config = small("dm", lr_img=1e30, eval_every=0)
    with pytest.raises(distill.DivergedError, match="method dm") as caught:
        run(config, tmp_path, tiny_mnist)
    assert "Lower --lr-img" in str(caught.value)
    iteration = caught.value.iteration
    kept = store.read_metadata(tmp_path / distill.DISTILLED_NAME)
    assert kept["diverged_at"] == iteration and kept["iteration"] == iteration - 1
    assert store.read_metadata(tmp_path / distill.CHECKPOINT_NAME)["iteration"] == iteration - 1
    images = distilled.load(tmp_path / distill.DISTILLED_NAME).images
    assert bool(torch.isfinite(images).all())


def test_out_of_memory_keeps_the_last_state_and_names_the_methods_lever(
    tiny_mnist, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    original = distill.MethodStep.step

    def out_of_memory_in_iteration_2(self, state):
        if state.iteration == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, state)

    monkeypatch.setattr(distill.MethodStep, "step", out_of_memory_in_iteration_2)
    result = invoke(*cli_args(tiny_mnist, out, "dm"))
    assert result.exit_code == faults.EXIT_OUT_OF_MEMORY, result.output
    assert "--batch-real" in result.output
    assert f"continue with 'ddpp distill --resume {out}'" in result.output  # no --unroll
    assert store.read_metadata(out / distill.CHECKPOINT_NAME)["iteration"] == 1


# -------------------------------------------------------------------------------- visualize


def test_visualize_draws_the_curves_of_another_methods_run(tiny_mnist, tmp_path):
    run(small("dm", iterations=2, eval_every=1), tmp_path / "run", tiny_mnist)
    metrics = visualize.read_metrics(tmp_path / "run")
    assert [p.key for p in visualize.panels_for(metrics)] == ["loss", "val_accuracy"]
    cafe = [{"iteration": 1, "loss": 1.0, "image_steps": 10, "inner_epochs": 30}]
    assert len(visualize.panels_for(cafe)) == 4
    assert visualize.panels_for([{"iteration": 1, "loss": 1.0, "lr": 0.01}]) == visualize.PANELS
    result = invoke("visualize", tmp_path / "run", "--curves", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_an_out_of_memory_run_is_told_its_next_lighter_setting():
    tm = distill.DistillConfig.from_preset("mnist", 1)
    assert distill.lighter_unroll(tm) == " --unroll memory"
    memory = replace(tm, unroll="memory")
    assert distill.lighter_unroll(memory) == " --unroll-budget 0"
    assert distill.lighter_unroll(replace(memory, unroll_budget=0)) == ""
    assert distill.lighter_unroll(distill.DistillConfig.from_preset("mnist", 1, method="dm")) == ""
