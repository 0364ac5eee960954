"""Progress in logs that are not terminals: plain lines at finished units and every interval."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ddpp_cli.progress import LogLineProgress, clock, log_interval, make_progress, rate_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log_progress(interval: float) -> tuple[LogLineProgress, io.StringIO, FakeClock]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    fake = FakeClock()
    progress = LogLineProgress(console=console, interval=interval, get_time=fake)
    return progress, buffer, fake


def _lines(buffer: io.StringIO) -> list[str]:
    return [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in buffer.getvalue().splitlines()]


def test_make_progress_prints_plain_lines_off_a_terminal_and_bars_on_one():
    assert isinstance(make_progress(Console(file=io.StringIO())), LogLineProgress)
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(make_progress(terminal), LogLineProgress)


def test_a_line_when_the_task_finishes_and_otherwise_once_per_interval():
    progress, buffer, fake = _log_progress(interval=30)
    with progress:
        task = progress.add_task("iterations", total=4, info="")
        fake.now += 10
        progress.update(task, advance=1, info="loss 0.5")
        assert _lines(buffer) == []  # 10 s < 30 s since the start
        fake.now += 25
        progress.update(task, advance=1, info="loss 0.4")  # 35 s: a line
        fake.now += 5
        progress.update(task, advance=1, info="loss 0.3")  # 5 s after the last line: none
        fake.now += 5
        progress.advance(task)  # finished: a line whatever the interval
    assert _lines(buffer) == [
        "iterations 2/4 (50.0 %) 17.5 s/it ETA 0:00:35 loss 0.4",
        "iterations 4/4 (100.0 %) 11.2 s/it ETA 0:00:00 loss 0.3",
    ]


def test_a_task_made_with_log_each_prints_every_completed_unit():
    progress, buffer, fake = _log_progress(interval=30)
    with progress:
        epochs = progress.add_task("expert 0", total=3, info="", log_each=True)
        other = progress.add_task("iterations", total=3, info="")
        for _ in range(3):
            fake.now += 12  # each epoch well under the 30 s heartbeat
            progress.advance(epochs)
            progress.update(other, advance=1)
        progress.update(epochs, info="again")  # no unit completed: no line
    assert _lines(buffer) == [
        "expert 0 1/3 (33.3 %) 12.0 s/it ETA 0:00:24",
        "expert 0 2/3 (66.7 %) 12.0 s/it ETA 0:00:12",
        "expert 0 3/3 (100.0 %) 12.0 s/it ETA 0:00:00",
        "iterations 3/3 (100.0 %) 12.0 s/it ETA 0:00:00",
    ]


def test_rate_counts_only_units_done_since_the_task_started_or_was_reset():
    progress, buffer, fake = _log_progress(interval=0)
    task = progress.add_task("experts", total=10, completed=6, info="")  # 6 resumed
    fake.now += 4
    progress.update(task, advance=2, info="")
    progress.reset(task, total=3, info="")  # a new unit: its clock and count restart
    fake.now += 1
    progress.update(task, advance=3, info="")
    assert _lines(buffer) == [
        "experts 8/10 (80.0 %) 2.0 s/it ETA 0:00:04",
        "experts 3/3 (100.0 %) 3.00 it/s ETA 0:00:00",
    ]


def test_hidden_and_disabled_tasks_print_nothing():
    progress, buffer, _ = _log_progress(interval=0)
    hidden = progress.add_task("evaluation", total=2, visible=False, info="")
    progress.update(hidden, advance=2)
    assert buffer.getvalue() == ""
    quiet, quiet_buffer, _ = _log_progress(interval=0)
    quiet.disable = True
    task = quiet.add_task("x", total=1, info="")
    quiet.update(task, advance=1)
    assert quiet_buffer.getvalue() == ""


def test_formatting_helpers_and_interval_variable(monkeypatch):
    assert clock(3725.4) == "1:02:05"
    assert clock(None) == "–"
    assert rate_text(2.5) == "2.50 it/s"
    assert rate_text(0.25) == "4.0 s/it"
    monkeypatch.setenv("DDPP_PROGRESS_INTERVAL", "5")
    assert log_interval() == 5.0
    monkeypatch.setenv("DDPP_PROGRESS_INTERVAL", "soon")
    assert log_interval() == 30.0


@pytest.mark.slow
def test_a_buffer_run_logs_plain_progress_lines_when_stderr_is_not_a_terminal(
    tiny_mnist, tmp_path: Path
):
    command = [
        sys.executable, "-m", "ddpp_cli", "buffer", "--dataset", "mnist",
        "--data-dir", str(tiny_mnist), "--no-download", "--out", str(tmp_path / "b"),
        "--device", "cpu", "--batch-size", "64", "--experts", "2", "--epochs", "2", "--image-size",
        "8",
    ]  # fmt: skip
    env = {**os.environ, "DDPP_PROGRESS_INTERVAL": "3600", "COLUMNS": "200"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    lines = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in done.stderr.splitlines()]
    finished_experts = [line for line in lines if re.match(r"expert [01] 2/2 \(100\.0 %\)", line)]
    assert len(finished_experts) == 2, done.stderr  # one line per finished unit
    first_epochs = [line for line in lines if re.match(r"expert [01] 1/2 \(50\.0 %\)", line)]
    assert len(first_epochs) == 2, done.stderr  # and one per finished epoch, however short
    assert all("ETA 0:00:00" in line and "loss" in line for line in finished_experts)
    assert any(line.startswith("experts 2/2 (100.0 %)") for line in lines), done.stderr
    assert "━" not in done.stderr  # no bar drawing in a log


def test_a_milestone_prints_a_line_in_a_log_and_nothing_on_a_terminal():
    from ddpp_cli.progress import milestone

    progress, buffer, fake = _log_progress(interval=30)
    with progress:
        task = progress.add_task("iterations", total=10, info="")
        fake.now += 4
        progress.update(task, advance=2)
        milestone(progress, task)  # a checkpoint at iteration 2, 4 s after the start
    assert _lines(buffer) == ["iterations 2/10 (20.0 %) 2.0 s/it ETA 0:00:16"]
    terminal = io.StringIO()
    bars = make_progress(Console(file=terminal, force_terminal=True, width=100))
    task = bars.add_task("iterations", total=10, info="")
    milestone(bars, task)
    milestone(bars, None)
    assert terminal.getvalue() == ""
