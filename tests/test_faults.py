"""Faults of the environment: one line and a status of their own; failed writes damage nothing."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from ddpp_cli.engine import faults, store


def test_out_of_memory_of_every_device_is_one_line_with_the_levers():
    levers = "--unroll memory, a smaller --batch-syn or a smaller --parallel"
    for exc in (
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"),
        RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"),
        MemoryError(),
    ):
        fault = faults.describe(exc, memory_levers=levers)
        assert fault is not None, exc
        assert fault.status == faults.EXIT_OUT_OF_MEMORY == 3
        assert fault.message.startswith("out of memory (")
        assert fault.message.endswith(f"; reduce memory with {levers}.")
        assert "\n" not in fault.message


def test_a_real_host_allocation_failure_is_out_of_memory():
    with pytest.raises(RuntimeError) as raised:
        torch.empty(10**14)  # 400 TB: the CPU allocator refuses at once
    fault = faults.describe(raised.value, memory_levers="a smaller --batch-size")
    assert fault is not None and fault.status == faults.EXIT_OUT_OF_MEMORY
    assert fault.message.endswith("; reduce memory with a smaller --batch-size.")


def test_disk_full_unwritable_and_vanished_paths_each_have_a_status():
    full = faults.describe(OSError(errno.ENOSPC, "No space left on device", "/runs/a/x.tmp"))
    assert full == faults.Fault(
        4,
        "no space left to write /runs/a/x.tmp (No space left on device); free disk space or "
        "choose another output folder, then run the same command again to continue.",
    )
    denied = faults.describe(PermissionError(errno.EACCES, "Permission denied", "/runs/b"))
    assert denied is not None and denied.status == faults.EXIT_CANNOT_WRITE == 5
    assert denied.message.startswith("cannot write /runs/b (Permission denied)")
    gone = faults.describe(FileNotFoundError(errno.ENOENT, "No such file or directory", "/r/c"))
    assert gone is not None and gone.status == 5 and "moved or deleted" in gone.message


def test_a_permission_error_on_an_unreadable_input_says_read(tmp_path, monkeypatch):
    data = tmp_path / "images.pt"
    data.write_bytes(b"x")
    monkeypatch.setattr(faults.os, "access", lambda path, mode: Path(path) != data)
    denied = faults.describe(PermissionError(errno.EACCES, "Permission denied", str(data)))
    assert denied is not None and denied.status == faults.EXIT_CANNOT_WRITE
    assert denied.message.startswith(f"cannot read {data} (Permission denied); make it readable")
    output = tmp_path / "out"  # not there yet: a failed write
    denied = faults.describe(PermissionError(errno.EACCES, "Permission denied", str(output)))
    assert denied is not None and denied.message.startswith(f"cannot write {output}")


def _raised(action) -> OSError:
    with pytest.raises(OSError) as raised:
        action()
    return raised.value


def test_paths_of_the_wrong_kind_are_one_line_naming_the_path(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    a_folder = tmp_path / "folder"
    a_folder.mkdir()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = {
        "exists and is not a folder": lambda: a_file.mkdir(parents=True, exist_ok=True),
        "is a file where a folder is needed": lambda: (a_file / "run").mkdir(parents=True),
        "is a folder where a file is needed": lambda: a_folder.open("wb"),
        "too long for the file system": lambda: (tmp_path / ("x" * 300)).mkdir(),
        "loop of symbolic links": lambda: (loop / "x").mkdir(parents=True),
        "not empty": lambda: (a_folder / "inside").touch() or a_folder.rmdir(),
    }
    for expected, action in cases.items():
        exc = _raised(action)
        fault = faults.describe(exc)
        assert fault is not None, (expected, exc)
        assert fault.status == faults.EXIT_CANNOT_WRITE
        assert expected in fault.message and "\n" not in fault.message
        assert len(fault.message) < 400  # an over-long name is elided, the line stays readable


def test_store_writes_onto_a_folder_or_through_a_file_are_faults(tmp_path):
    folder = tmp_path / "set.safetensors"
    folder.mkdir()
    exc = _raised(lambda: store.atomic_write_text(folder, "{}"))
    assert faults.describe(exc) is not None
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    exc = _raised(lambda: store.atomic_write_text(a_file / "x.json", "{}"))
    assert faults.describe(exc) is not None


def test_other_exceptions_are_not_environment_faults():
    assert faults.describe(ValueError("bug")) is None
    assert faults.describe(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert faults.describe(OSError("no errno")) is None


def _write_old(path: Path) -> bytes:
    store.write(path, {"x": torch.arange(4.0)}, store.ZCA_FORMAT, {"n": 1})
    return path.read_bytes()


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        PermissionError(errno.EACCES, "Permission denied"),
    ],
)
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, error):
    path = tmp_path / "set.safetensors"
    old = _write_old(path)

    def failing_fsync(fd: int) -> None:
        raise error

    monkeypatch.setattr(store.os, "fsync", failing_fsync)  # the data never reached the disk
    with pytest.raises(OSError) as raised:
        store.write(path, {"x": torch.zeros(1000)}, store.ZCA_FORMAT, {"n": 2})
    assert raised.value.errno == error.errno
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.safetensors"]


def test_a_write_syncs_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(store.os, "fsync", recording_fsync)
    path = tmp_path / "a.safetensors"
    store.write(path, {"x": torch.ones(2)}, store.ZCA_FORMAT, {})
    assert len(synced) == 2
    assert Path(synced[0]).parent == tmp_path and Path(synced[0]).name.endswith(".tmp")
    assert Path(synced[1]) == tmp_path
