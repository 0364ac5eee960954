"""The command line end to end: exit codes, one-line errors, kill-safety and real data."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONVNET_8PX_PARAMETERS, assert_one_line_error, kill_ddpp_when
from PIL import Image
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import store

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def tiny_buffer_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """A tiny buffer at 8×8 (a fast ConvNet): no test here depends on the image size."""
    return [
        "buffer", "--dataset", "mnist", "--data-dir", str(data_dir), "--no-download",
        "--out", str(out), "--device", "cpu", "--batch-size", "64", "--image-size", "8", *extra,
    ]  # fmt: skip


def test_help_lists_buffer_with_a_description():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "buffer" in result.output
    assert "Train expert trajectories" in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("ddpp ")


@pytest.mark.parametrize("command", ["evaluate", "crossarch", "visualize"])
def test_the_old_zca_file_spelling_is_refused_naming_the_new_one(command, tmp_path):
    zca_file = tmp_path / "zca.safetensors"
    result = invoke(command, tmp_path / "set.safetensors", "--zca", zca_file)
    assert_one_line_error(result, "--zca is now --zca-file")
    both = invoke(command, tmp_path / "set.safetensors", "--zca", zca_file, "--no-zca")
    assert both.exit_code == 2, both.output  # the switch never meets the file option
    assert "--zca-file" in invoke(command, "--help").output


@pytest.mark.parametrize("command", ["buffer", "distill", "run"])
def test_zca_stays_a_switch_where_it_is_one(command):
    output = " ".join(invoke(command, "--help").output.split())
    assert "--zca --no-zca" in output and "--zca-file" not in output


@pytest.mark.slow
def test_python_dash_m_works():
    done = subprocess.run(
        [sys.executable, "-m", "ddpp_cli", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "buffer" in done.stdout


def test_buffer_writes_files_and_prints_a_summary(tiny_mnist, tmp_path):
    result = invoke(
        *tiny_buffer_args(tiny_mnist, tmp_path / "b", "--experts", "1", "--epochs", "1")
    )
    assert result.exit_code == 0, result.output
    assert "Expert trajectories" in result.output
    assert "manifest:" in result.output
    assert (tmp_path / "b" / "expert_0000.safetensors").is_file()
    assert (tmp_path / "b" / "buffer.json").is_file()


@pytest.mark.slow
def test_quiet_prints_only_the_folder(tiny_mnist, tmp_path):
    result = invoke(
        *tiny_buffer_args(tiny_mnist, tmp_path / "b", "--experts", "1", "--epochs", "1", "--quiet")
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "b")


@pytest.mark.slow
def test_default_output_folder_is_under_the_data_dir(tiny_mnist, tmp_path):
    args = ["buffer", "--dataset", "mnist", "--data-dir", str(tiny_mnist), "--no-download",
            "--experts", "1", "--epochs", "1", "--device", "cpu", "--image-size", "8",
            "--quiet"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip())
    assert folder == buffer_engine.default_buffer_dir("mnist", "convnet", False)
    assert str(folder).startswith(os.environ["XDG_DATA_HOME"])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--dataset", "imagenet21k"], ["unknown dataset 'imagenet21k'", "cifar10"]),
        (["--arch", "transformer"], ["unknown architecture 'transformer'", "convnet"]),
        (["--experts", "0"], ["--experts must be at least 1"]),
        (["--device", "tpu"], ["unknown device 'tpu'"]),
    ],
)
def test_bad_options_exit_2_with_one_line(tiny_mnist, tmp_path, args, fragments):
    result = invoke(*tiny_buffer_args(tiny_mnist, tmp_path / "b"), *args)
    assert_one_line_error(result, *fragments)


def test_missing_data_folder(tmp_path):
    result = invoke(*tiny_buffer_args(tmp_path / "nowhere", tmp_path / "b"))
    assert_one_line_error(result)
    assert "--data-dir" in result.output or "download" in result.output


def test_zca_on_too_large_images_is_refused(tmp_path):
    root = tmp_path / "folder"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (72, 72), (i * 90, 20, 200)).save(root / split / name / f"{i}.png")
    result = invoke(
        "buffer", "--dataset", "imagefolder", "--data-dir", str(root), "--zca",
        "--out", str(tmp_path / "b"), "--device", "cpu",
    )  # fmt: skip
    assert_one_line_error(result, "ZCA")


def test_buffer_folder_with_other_settings_is_refused(tiny_mnist, tmp_path):
    ok = invoke(*tiny_buffer_args(tiny_mnist, tmp_path / "b", "--experts", "1", "--epochs", "1"))
    assert ok.exit_code == 0, ok.output
    result = invoke(
        *tiny_buffer_args(tiny_mnist, tmp_path / "b", "--experts", "1", "--epochs", "2")
    )
    assert_one_line_error(result, "other settings", "epochs")


def test_corrupted_expert_file_is_refused(tiny_mnist, tmp_path):
    ok = invoke(*tiny_buffer_args(tiny_mnist, tmp_path / "b", "--experts", "1", "--epochs", "1"))
    assert ok.exit_code == 0, ok.output
    path = tmp_path / "b" / "expert_0000.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    result = invoke(
        *tiny_buffer_args(tiny_mnist, tmp_path / "b", "--experts", "2", "--epochs", "1")
    )
    assert_one_line_error(result, "expert_0000.safetensors")


def test_import_of_a_non_tensor_pickle_is_refused(tiny_mnist, tmp_path):
    source = tmp_path / "mtt"
    source.mkdir()
    torch.save({"epochs": 3}, source / "replay_buffer_0.pt")
    result = invoke(
        "buffer", "--import", source, "--dataset", "mnist", "--data-dir", tiny_mnist,
        "--no-download", "--no-zca", "--out", tmp_path / "b",
    )  # fmt: skip
    assert_one_line_error(result, "replay_buffer_0.pt")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sigkill_mid_expert_then_rerun_completes_without_damage(tiny_mnist, tmp_path):
    out = tmp_path / "b"
    args = tiny_buffer_args(tiny_mnist, out, "--experts", "2", "--epochs", "2", "--quiet")
    kill_ddpp_when(  # after expert 1's first epoch of 2: mid-expert by construction
        args, display="buffer.BufferDisplay", message="expert 1 is training",
        when="isinstance(event, buffer_engine.EpochFinished) and event.index == 1",
    )  # fmt: skip
    files = buffer_engine.expert_files(out)
    assert sorted(files) == [0]
    for path in files.values():
        params = store.read(path, store.TRAJECTORY_FORMAT).tensors["params"]
        assert params.shape == (3, CONVNET_8PX_PARAMETERS)  # 3 snapshots: start and 2 epochs
    hashes = {i: _sha(p) for i, p in files.items()}

    done = invoke(*args)  # a new run over what the killed process left
    assert done.exit_code == 0, done.output
    files = buffer_engine.expert_files(out)
    assert sorted(files) == [0, 1]
    assert not list(out.glob(".*.tmp"))
    for index, digest in hashes.items():
        assert _sha(files[index]) == digest
    for path in files.values():
        store.read(path, store.TRAJECTORY_FORMAT)


@pytest.mark.slow
def test_real_fashion_mnist_buffer(fashion_mnist_dir, tmp_path):
    result = invoke(
        "buffer", "--dataset", "fashionmnist", "--data-dir", str(fashion_mnist_dir),
        "--experts", "1", "--epochs", "1", "--train-subset", "1000", "--test-subset", "500",
        "--batch-size", "128",  # 8 SGD steps on 1000 real images: 61 % at seed 1
        "--out", str(tmp_path / "b"), "--device", "cpu", "--seed", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = buffer_engine.load_trajectory(tmp_path / "b" / "expert_0000.safetensors")
    assert loaded.params.shape == (2, 317_706)
    assert loaded.metadata["data"]["train_size"] == 1000
    assert loaded.metadata["test_accuracy"][-1] >= 0.55


@pytest.mark.slow
@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("0", "0")])
def test_the_package_asks_for_huge_pages_before_torch_unless_told_otherwise(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if given is not None:
        env["THP_MEM_ALLOC_ENABLE"] = given
    code = (
        "import os, sys, ddpp_cli; "
        "print(os.environ['THP_MEM_ALLOC_ENABLE'], 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split() == [expected, "False"]  # set before torch is imported
