"""The layout: stamped names, the output-folder guard, and one writer per folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime

import pytest

from ddpp_cli.engine import layout
from ddpp_cli.engine.errors import DdppError


def test_stamped_names_and_the_data_home(monkeypatch, tmp_path):
    assert layout.stamped("fashionmnist-ipc1", datetime(2026, 1, 2, 3, 4, 5)) == (
        "fashionmnist-ipc1-20260102-030405"
    )
    monkeypatch.setattr(layout.platformdirs, "user_data_path", lambda app: tmp_path / app)
    assert layout.data_home() == tmp_path / "ddpp"
    folder = layout.default_runs_folder("x", datetime(2026, 1, 2, 3, 4, 5))
    assert folder == tmp_path / "ddpp" / "runs" / "x-20260102-030405"


def test_the_output_folder_guard(tmp_path):
    layout.check_output_folder(tmp_path / "new", {"a"}, "ddpp run")  # not there: fine
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "a").touch()
    (folder / ".x.tmp").touch()  # an interrupted write's temporary
    (folder / layout.LOCK_NAME).touch()
    layout.check_output_folder(folder, {"a"}, "ddpp run")
    for name in ("b", "c", "d", "e"):
        (folder / name).touch()
    with pytest.raises(DdppError, match=r"holds other files \(b, c, d, …\), not a ddpp run"):
        layout.check_output_folder(folder, {"a"}, "ddpp run")
    with pytest.raises(DdppError, match="is a file, not a run folder; give a new or empty --out"):
        layout.check_output_folder(folder / "a", (), "ddpp run")


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


def test_a_second_writer_is_refused_naming_the_holder_until_it_dies(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(
                DdppError, match=rf"being written by another ddpp process \(pid {holder.pid}\)"
            ),
            layout.writing(folder),
        ):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel releases the lock of a killed process
        holder.wait()
    with layout.writing(folder):  # a killed holder's lock file is taken over
        assert (folder / layout.LOCK_NAME).read_text().strip() == str(os.getpid())
        (folder / "set.safetensors").write_text("written")
    assert sorted(p.name for p in folder.iterdir()) == ["set.safetensors"]  # the lock went
    with layout.writing(folder), layout.writing(folder / "other"):
        pass  # released on leaving; another folder is another lock
    assert not (folder / "other").exists()  # made for nothing: removed again
    with layout.writing(tmp_path / "rank1", enabled=False):
        assert not (tmp_path / "rank1").exists()
