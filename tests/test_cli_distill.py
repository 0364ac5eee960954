"""``ddpp distill`` end to end: settings and summary, exit statuses 0/1/2/130, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import distill, distilled, store, student

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def buffer_dir(tiny_buffer) -> Path:
    return tiny_buffer  # conftest: 2 experts × 3 epochs, 8×8 MNIST


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def distill_args(data_dir: Path, buffer: Path | None, out: Path, *extra: object) -> list[object]:
    args = [
        "distill", "--dataset", "mnist", "--ipc", 1, "--data-dir", data_dir, "--no-download",
        "--out", out, "--device", "cpu", "--syn-steps", 2, "--expert-epochs", 1,
        "--max-start-epoch", 2, "--iterations", 3, "--batch-syn", 5, "--lr-lr", 1e-7,
        "--eval-every", 0, "--test-runs", 0,
    ]  # fmt: skip
    if buffer is not None:
        args += ["--buffer", buffer]
    return [*args, *extra]


def test_help_lists_distill():
    result = invoke("--help")
    assert result.exit_code == 0 and "distill" in result.output
    result = invoke("distill", "--help")
    assert result.exit_code == 0
    for flag in ("--eps", "--syn-steps", "--max-start-epoch", "--resume", "--lr-teacher"):
        assert flag in result.output


def test_distill_prints_settings_and_summary(tiny_mnist, buffer_dir, tmp_path):
    out = tmp_path / "run"
    extra = ["--eval-every", 3, "--eval-runs", 1, "--eval-epochs", 2, "--test-runs", 1]
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out, *extra))
    assert result.exit_code == 0, result.output
    assert "resolved settings" in result.output
    assert "lr_img" in result.output and "preset" in result.output
    assert "test accuracy" in result.output and "best validation" in result.output
    assert str(out / distill.DISTILLED_NAME) in result.output.replace("\n", "")
    assert distilled.load(out / distill.BEST_NAME).labels.tolist() == list(range(10))


def test_json_and_resume_of_a_finished_run(tiny_mnist, buffer_dir, tmp_path):
    out = tmp_path / "run"
    first = invoke(*distill_args(tiny_mnist, buffer_dir, out, "--json"))
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 3 and summary["test"] is None
    more = invoke("distill", "--resume", out, "--iterations", 5, "--data-dir", tiny_mnist,
                  "--no-download", "--device", "cpu", "--quiet")  # fmt: skip
    assert more.exit_code == 0, more.output
    assert more.output.strip().splitlines()[-1] == str(out)
    assert store.read_metadata(out / distill.CHECKPOINT_NAME)["iteration"] == 5
    lines = (out / distill.METRICS_NAME).read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1, 2, 3, 4, 5]


def test_resume_with_a_changed_setting_is_refused(tiny_mnist, buffer_dir, tmp_path):
    out = tmp_path / "run"
    assert invoke(*distill_args(tiny_mnist, buffer_dir, out, "--quiet")).exit_code == 0
    result = invoke("distill", "--resume", out, "--lr-img", 7, "--data-dir", tiny_mnist,
                    "--no-download", "--device", "cpu")  # fmt: skip
    assert_one_line_error(result, "other settings", "lr_img: 100.0 there vs 7.0 now")


def test_forced_nan_exits_1_with_a_loadable_set(tiny_mnist, buffer_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out, "--lr-img", 1e30,
                                  "--iterations", 20, "--quiet"))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "diverged" in result.output and "Traceback" not in result.output
    assert "distilled.safetensors" in result.output
    last_good = distilled.load(out / distill.DISTILLED_NAME)
    assert torch.isfinite(last_good.images).all()


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tiny_mnist, buffer_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = distill.MatchingStep.step
    calls = []

    def interrupted_step(self, state):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, state)

    monkeypatch.setattr(distill.MatchingStep, "step", interrupted_step)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    assert result.exit_code == 130, result.output
    assert "--resume" in result.output
    assert store.read_metadata(out / distill.CHECKPOINT_NAME)["iteration"] == 1
    assert distilled.load(out / distill.DISTILLED_NAME).images.shape == (10, 1, 8, 8)


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--ipc", 0], ["--ipc must be at least 1"]),
        (["--ipc", 500], ["--ipc 500 is more than class", "use --ipc"]),
        (["--eps", 1.0], ["--eps must be in [0, 1)"]),
        (["--eps", -0.5], ["--eps must be in [0, 1)"]),
        (["--max-start-epoch", 3, "--expert-epochs", 2], ["needs experts of at least 4 epochs"]),
        (["--arch", "convnet-d3"], ["architecture 'convnet', not 'convnet-d3'"]),
        (["--dataset", "fashionmnist"], ["made for dataset 'mnist', not 'fashionmnist'"]),
        (["--init", "zeros"], ["--init must be one of"]),
        (["--device", "tpu"], ["unknown device"]),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_mnist, buffer_dir, tmp_path, extra, fragments):
    result = invoke(*distill_args(tiny_mnist, buffer_dir, tmp_path / "run", *extra))
    assert_one_line_error(result, *fragments)


def test_missing_buffer_names_the_buffer_command(tiny_mnist, tmp_path):
    result = invoke(*distill_args(tiny_mnist, None, tmp_path / "run"))
    assert_one_line_error(result, "make it with 'ddpp buffer --dataset mnist --arch convnet'")
    result = invoke(*distill_args(tiny_mnist, tmp_path / "nowhere", tmp_path / "run"))
    assert_one_line_error(result, f"--out {tmp_path / 'nowhere'}'")


def test_resume_of_a_folder_without_checkpoint(tmp_path):
    result = invoke("distill", "--resume", tmp_path)
    assert_one_line_error(result, "no checkpoint.safetensors")
    result = invoke("distill", "--dataset", "mnist")
    assert_one_line_error(result, "--dataset and --ipc are needed")


def test_default_buffer_and_run_folder(tiny_mnist, buffer_dir, tmp_path):
    """Without --buffer/--out: the buffer under the data folder, a new run folder under it."""
    default_buffer = tmp_path / "xdg-data" / "ddpp" / "buffers" / "mnist-convnet"
    shutil.copytree(buffer_dir, default_buffer)
    args = distill_args(tiny_mnist, None, tmp_path / "unused", "--quiet")
    out_at = args.index("--out")
    del args[out_at : out_at + 2]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "xdg-data" / "ddpp" / "runs"
    assert folder.name.startswith("mnist-ipc1-eps0.1-")
    assert distilled.load(folder / distill.DISTILLED_NAME).settings["buffer_path"] == str(
        default_buffer.resolve()
    )


@pytest.mark.slow
def test_sigterm_checkpoints_like_ctrl_c(tiny_mnist, buffer_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = distill.MatchingStep.step
    calls = []

    def terminated_step(self, state):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, state)

    monkeypatch.setattr(distill.MatchingStep, "step", terminated_step)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    assert result.exit_code == 130, result.output
    assert store.read_metadata(out / distill.CHECKPOINT_NAME)["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_unroll_memory_runs_end_to_end(tiny_mnist, buffer_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out, "--unroll", "memory", "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["iterations"] == 3
    assert distill.saved_config(out).unroll == "memory"
    assert distilled.load(out / distill.DISTILLED_NAME).settings["unroll"] == "memory"
    help_text = invoke("distill", "--help").output
    for flag in ("--unroll", "--amp", "--compile", "--channels-last"):
        assert flag in help_text


def test_unknown_unroll_mode_is_one_line(tiny_mnist, buffer_dir, tmp_path):
    result = invoke(*distill_args(tiny_mnist, buffer_dir, tmp_path / "run", "--unroll", "x"))
    assert_one_line_error(result, "--unroll must be one of: graph, memory")


@pytest.mark.slow
def test_compile_failure_is_a_note_not_an_error(tiny_mnist, buffer_dir, tmp_path, monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(student, "COMPILE_BACKEND", broken_backend)
    torch._dynamo.reset()
    out = tmp_path / "run"
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out, "--compile"))
    assert result.exit_code == 0, result.output
    assert "note:" in result.output and "continuing without --compile" in result.output


def test_snapshots_make_an_animation_and_are_redone_after_a_resume(
    tiny_mnist, buffer_dir, tmp_path
):
    from PIL import Image

    out = tmp_path / "run"
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out, "--snapshot-every", 1, "--quiet"))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "snapshots").iterdir())
    assert names == [f"iter_{i:06d}.safetensors" for i in range(4)]
    first, last = (distilled.load(out / "snapshots" / names[i]) for i in (0, -1))
    assert not torch.equal(first.images, last.images)
    assert torch.equal(last.images, distilled.load(out / distill.DISTILLED_NAME).images)

    gif = tmp_path / "anim.gif"
    result = invoke("visualize", out, "--animate", gif, "--upsample", 2)
    assert result.exit_code == 0, result.output
    assert "4 frames" in result.output
    with Image.open(gif) as image:
        assert image.n_frames == 4 and image.info["duration"] == 250

    # A snapshot from beyond the checkpoint (a killed run) is dropped and redone on resume.
    (out / "snapshots" / "iter_000009.safetensors").write_bytes(b"stale")
    result = invoke("distill", "--resume", out, "--iterations", 4, "--data-dir", tiny_mnist,
                    "--no-download", "--device", "cpu", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "snapshots").iterdir())
    assert names == [f"iter_{i:06d}.safetensors" for i in range(5)]
    assert_one_line_error(
        invoke("visualize", out, "--animate", tmp_path / "anim.png"), "writes a GIF"
    )


def test_out_folder_of_other_files_is_refused_in_one_line(tiny_mnist, buffer_dir, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "ideas.md").write_text("mine")
    result = invoke(*distill_args(tiny_mnist, buffer_dir, folder))
    assert_one_line_error(result, str(folder), "ideas.md", "--out")
    assert [p.name for p in folder.iterdir()] == ["ideas.md"]


def test_settings_table_says_where_each_step_size_comes_from(tiny_mnist, buffer_dir, tmp_path):
    result = invoke(*distill_args(tiny_mnist, buffer_dir, tmp_path / "run"))  # gives --lr-lr
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert "derived: expert lr" in rows["lr_teacher"]  # mnist has no paper row
    assert "user" in rows["lr_lr"] and "preset" in rows["lr_img"]


def test_auto_lr_opens_a_paper_rows_step_sizes(tmp_path, monkeypatch):
    seen = []

    def fake_distill(config, folder, **kwargs):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(distill, "distill", fake_distill)
    for extra in ([], ["--auto-lr"]):
        invoke("distill", "--dataset", "cifar10", "--ipc", 1, "--out", tmp_path / "r", *extra)
    assert (seen[0].lr_teacher, seen[0].lr_lr) == (0.01, 1e-7)  # the paper's, untouched
    assert (seen[1].lr_teacher, seen[1].lr_lr) == (None, None)  # derived when the run starts
