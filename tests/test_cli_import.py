"""``ddpp buffer --import`` through the command line: refused options, --experts, ZCA from MTT's
folder names, --device, an unknown total, and a real ``kill -9`` then a rerun.

The MTT folders are named as MTT's buffer.py names them and hold MTT's ConvNet shapes (see
``test_mtt_import.py``, whose fixtures are reused here).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, kill_ddpp_when
from test_mtt_import import mtt_convnet_shapes, mtt_folder, tiny_cifar  # noqa: F401 (fixture)
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.commands import buffer as buffer_command
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import faults, store
from ddpp_cli.engine.buffer import mtt_import

runner = CliRunner()


def import_args(data_dir: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return [
        "buffer", "--import", str(source), "--dataset", "mnist", "--data-dir", str(data_dir),
        "--no-download", "--out", str(out), "--no-zca", *extra,
    ]  # fmt: skip


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "given",
    [
        ("--epochs", "3"), ("--lr", "0.1"), ("--batch-size", "64"), ("--dsa",), ("--no-dsa",),
        ("--train-subset", "10"), ("--test-subset", "10"), ("--parallel", "2"), ("--seed", "0"),
    ],
)  # fmt: skip
def test_each_training_option_is_refused_in_one_line(tiny_mnist, tmp_path, given):
    source = mtt_folder(tmp_path, "mnist", [1])
    result = invoke(*import_args(tiny_mnist, source, tmp_path / "b", *given))
    flag = given[0].replace("--no-dsa", "--dsa")
    assert_one_line_error(result, flag, "does not apply to --import")
    assert not (tmp_path / "b").exists()


def test_a_bad_device_is_refused_in_one_line(tiny_mnist, tmp_path):
    source = mtt_folder(tmp_path, "mnist", [1])
    result = invoke(*import_args(tiny_mnist, source, tmp_path / "b", "--device", "tpu"))
    assert_one_line_error(result, "tpu")


def test_experts_takes_the_first_n_and_no_experts_takes_all(tiny_mnist, tmp_path):
    source = mtt_folder(tmp_path, "mnist", [2, 2])
    result = invoke(*import_args(tiny_mnist, source, tmp_path / "three", "--experts", "3"))
    assert result.exit_code == 0, result.output
    assert sorted(buffer_engine.expert_files(tmp_path / "three")) == [0, 1, 2]
    result = invoke(*import_args(tiny_mnist, source, tmp_path / "all"))
    assert result.exit_code == 0, result.output
    assert sorted(buffer_engine.expert_files(tmp_path / "all")) == [0, 1, 2, 3]
    assert "every expert found" in result.output  # the total is unknown until the last file
    assert "None" not in result.output
    result = invoke(*import_args(tiny_mnist, source, tmp_path / "five", "--experts", "5", "-q"))
    assert_one_line_error(result, "--experts 5", "(4)")


@pytest.mark.parametrize(("folder", "zca"), [("cifar10", True), ("cifar10_NO_ZCA", False)])
def test_zca_and_dataset_come_from_mtts_folder_name(tiny_cifar, tmp_path, folder, zca):  # noqa: F811
    source = mtt_folder(tmp_path, folder, [1], shapes=mtt_convnet_shapes(3, 10, 1))
    out = tmp_path / "out"
    result = invoke("buffer", "--import", source, "--no-download", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = buffer_engine.read_manifest(out)
    assert manifest.dataset == "cifar10"
    assert manifest.config["zca"] is zca
    assert manifest.preprocessing_kind == ("zca" if zca else "normalize")
    assert (out / "zca.safetensors").is_file() is zca


def test_zca_is_required_when_the_folder_does_not_tell(tiny_cifar, tmp_path):  # noqa: F811
    source = mtt_folder(tmp_path, "experts", [1], shapes=mtt_convnet_shapes(3, 10, 1))
    args = ["buffer", "--import", source, "--dataset", "cifar10", "--no-download"]
    result = invoke(*args, "--out", tmp_path / "b")
    assert_one_line_error(result, "--zca or --no-zca")
    result = invoke(*args, "--out", tmp_path / "b", "--no-zca", "--quiet")
    assert result.exit_code == 0, result.output
    assert buffer_engine.read_manifest(tmp_path / "b").config["zca"] is False


def test_the_default_folder_follows_the_inferred_zca(tiny_cifar, tmp_path):  # noqa: F811
    source = mtt_folder(tmp_path, "cifar10_NO_ZCA", [1], shapes=mtt_convnet_shapes(3, 10, 1))
    result = invoke("buffer", "--import", source, "--no-download", "--quiet")
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()) == buffer_engine.default_buffer_dir(
        "cifar10", "convnet", False
    )


@pytest.mark.slow
def test_sigkill_mid_import_then_rerun_equals_an_uninterrupted_import(tiny_mnist, tmp_path):
    source = mtt_folder(tmp_path, "mnist", [3, 1])
    whole = tmp_path / "whole"
    assert invoke(*import_args(tiny_mnist, source, whole, "--quiet")).exit_code == 0
    out = tmp_path / "out"
    args = import_args(tiny_mnist, source, out, "--quiet")
    kill_ddpp_when(  # between two experts of one MTT file, by construction
        args, display="buffer.BufferDisplay", message="expert 1 written",
        when="isinstance(event, buffer_engine.ExpertFinished) and event.record.index == 1",
    )  # fmt: skip
    assert sorted(buffer_engine.expert_files(out)) == [0, 1]

    done = invoke(*args)  # a new run over what the killed process left
    assert done.exit_code == 0, done.output
    files, expected = buffer_engine.expert_files(out), buffer_engine.expert_files(whole)
    assert sorted(files) == sorted(expected) == [0, 1, 2, 3]
    for index, path in expected.items():  # tensors and metadata, not bytes
        resumed, uninterrupted = (
            store.read(p, store.TRAJECTORY_FORMAT) for p in (files[index], path)
        )
        assert torch.equal(resumed.tensors["params"], uninterrupted.tensors["params"])
        assert resumed.metadata == uninterrupted.metadata
    assert json.loads((out / "buffer.json").read_text()) == json.loads(
        (whole / "buffer.json").read_text()
    )
    assert not list(out.glob(".*.tmp"))


def test_a_full_disk_mid_import_says_what_is_kept_and_how_to_continue(
    tiny_mnist, tmp_path, monkeypatch
):
    source = mtt_folder(tmp_path, "mnist", [3])
    out = tmp_path / "out"
    write = mtt_import._write_imported_expert

    def full_after_two(*args, **kwargs):
        if len(buffer_engine.expert_files(out)) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "x.tmp"))
        return write(*args, **kwargs)

    monkeypatch.setattr(mtt_import, "_write_imported_expert", full_after_two)
    result = invoke(*import_args(tiny_mnist, source, out, "--quiet"))
    assert result.exit_code == faults.EXIT_DISK_FULL, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "no space left" in lines[0]
    assert f"2 converted experts are kept in {out}" in " ".join(result.output.split())
    assert "the same command continues with the next expert" in " ".join(result.output.split())
    assert sorted(buffer_engine.expert_files(out)) == [0, 1]


def test_given_options_are_the_ones_on_the_command_line(tiny_mnist, tmp_path, monkeypatch):
    seen = {}

    def fake_import(ctx, source, out_dir, quiet):
        seen.update(buffer_command.given_options(ctx))
        raise SystemExit(0)

    monkeypatch.setattr(buffer_command, "_import", fake_import)
    invoke("buffer", "--import", tmp_path, "--experts", "100", "--zca")
    assert seen == {"import_dir": tmp_path, "experts": 100, "zca": True}
