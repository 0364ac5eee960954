"""Output paths as a user gets them wrong, and two writers of one folder: one line, exit 2 or 5,
nothing trained for nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import faults

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def distill_args(data_dir: Path, buffer: Path, out: Path) -> list[object]:
    return [
        "distill", "--dataset", "mnist", "--ipc", 1, "--data-dir", data_dir, "--no-download",
        "--out", out, "--buffer", buffer, "--device", "cpu", "--syn-steps", 2,
        "--expert-epochs", 1, "--max-start-epoch", 2, "--iterations", 2, "--batch-syn", 5,
        "--lr-lr", 1e-7, "--eval-every", 0, "--test-runs", 0, "--quiet",
    ]  # fmt: skip


def buffer_args(data_dir: Path, out: Path) -> list[object]:
    return [
        "buffer", "--dataset", "mnist", "--data-dir", data_dir, "--no-download", "--experts", 1,
        "--epochs", 1, "--device", "cpu", "--out", out, "--quiet",
    ]  # fmt: skip


def assert_fault_line(result, status: int, *fragments: str) -> None:
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ddpp_cli.engine import layout
    with layout.writing(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture
def held(tmp_path):
    """A folder another live process is writing (a re-queued cluster job)."""
    folder = tmp_path / "shared"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder.pid
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()


def test_a_second_distillation_into_a_folder_being_written_is_refused(
    held, tiny_mnist, tiny_buffer
):
    folder, pid = held
    (folder / ".distilled.safetensors.tmp").write_bytes(b"in flight")  # the writer's temporary
    result = invoke(*distill_args(tiny_mnist, tiny_buffer, folder))
    assert_one_line_error(result, str(folder), f"another ddpp process (pid {pid})")
    assert (folder / ".distilled.safetensors.tmp").read_bytes() == b"in flight"  # left alone


def test_a_second_buffer_into_a_folder_being_written_is_refused(held, tiny_mnist):
    folder, pid = held
    result = invoke(*buffer_args(tiny_mnist, folder))
    assert_one_line_error(result, f"being written by another ddpp process (pid {pid})")


def test_buffer_out_that_is_a_file_is_one_line(tmp_path, tiny_mnist):
    a_file = tmp_path / "buffer"
    a_file.write_text("x")
    result = invoke(*buffer_args(tiny_mnist, a_file))
    assert_fault_line(result, faults.EXIT_CANNOT_WRITE, str(a_file), "not a folder")


def test_an_out_path_the_os_refuses_is_one_line(tmp_path, tiny_mnist, tiny_buffer):
    too_long = tmp_path / ("r" * 300)
    result = invoke(*distill_args(tiny_mnist, tiny_buffer, too_long))
    assert_fault_line(result, faults.EXIT_CANNOT_WRITE, "too long for the file system")
    under_a_file = tmp_path / "file"
    under_a_file.write_text("x")
    result = invoke(*distill_args(tiny_mnist, tiny_buffer, under_a_file / "run"))
    assert_fault_line(result, faults.EXIT_CANNOT_WRITE, "a file where a folder is needed")


def test_records_that_cannot_be_a_folder_fail_before_any_network_trains(
    tmp_path, tiny_mnist, monkeypatch
):
    from ddpp_cli.engine.evaluate import protocol

    trained = []
    monkeypatch.setattr(protocol, "train_epoch", lambda *a, **k: trained.append(1) or 0.0)
    a_file = tmp_path / "records"
    a_file.write_text("x")
    result = invoke(
        "evaluate", "--baseline", "random", "--dataset", "mnist", "--data-dir", tiny_mnist,
        "--no-download", "--ipc", 1, "--runs", 1, "--epochs", 1, "--records", a_file,
    )  # fmt: skip
    assert_fault_line(result, faults.EXIT_CANNOT_WRITE, str(a_file), "not a folder")
    assert trained == []


def test_save_onto_a_folder_is_refused_even_with_force(tmp_path, tiny_mnist):
    folder = tmp_path / "set.safetensors"
    folder.mkdir()
    result = invoke(
        "evaluate", "--baseline", "random", "--dataset", "mnist", "--data-dir", tiny_mnist,
        "--no-download", "--ipc", 1, "--runs", 1, "--epochs", 1, "--save", folder, "--force",
    )  # fmt: skip
    assert_one_line_error(result, str(folder), "is a folder, not a file", "regular files only")
