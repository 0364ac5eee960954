"""Faults of the environment through the CLI (issue 13 item 3): out of memory, a full disk and
permission denied are one line each with a status of their own (3, 4, 5); distillation keeps the
last complete state and resumes bit for bit; a buffer keeps its finished experts; the best set
is never newer than the checkpoint that produced it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import distill, faults, store
from ddpp_cli.engine.buffer import train as buffer_train

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 1.00 GiB free)"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_fault_line(result, status: int, *fragments: str) -> str:
    """Exit ``status``, exactly one ``error:`` line naming every fragment, no traceback."""
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output
    return lines[0]


@pytest.fixture(scope="module")
def buffer_dir(tiny_buffer) -> Path:
    return tiny_buffer  # conftest: 2 experts × 3 epochs, 8×8 MNIST


def distill_args(data_dir: Path, buffer: Path, out: Path, *extra: object) -> list[object]:
    """Four iterations, validated at 2 and 4 (one 1-epoch network), checkpoints at 0, 2, 4."""
    return [
        "distill", "--dataset", "mnist", "--ipc", 1, "--data-dir", data_dir, "--no-download",
        "--out", out, "--buffer", buffer, "--device", "cpu", "--syn-steps", 2,
        "--expert-epochs", 1, "--max-start-epoch", 2, "--iterations", 4, "--batch-syn", 5,
        "--lr-lr", 1e-7, "--eval-every", 2, "--eval-runs", 1, "--eval-epochs", 1,
        "--test-runs", 0, "--checkpoint-every", 2, "--quiet", *extra,
    ]  # fmt: skip


def resume_args(data_dir: Path, out: Path) -> list[object]:
    return ["distill", "--resume", out, "--data-dir", data_dir, "--no-download", "--device",
            "cpu", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def straight_run(tiny_mnist, buffer_dir, tmp_path_factory) -> Path:
    """The uninterrupted run the resumed ones must equal."""
    out = tmp_path_factory.mktemp("faults-straight") / "run"
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    assert result.exit_code == 0, result.output
    return out


def checkpoint_iteration(folder: Path) -> int:
    return store.read_metadata(folder / distill.CHECKPOINT_NAME)["iteration"]


def without_timing(folder: Path) -> list[dict]:
    lines = (folder / distill.METRICS_NAME).read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("seconds", "elapsed")}
        for line in lines
    ]


# ----------------------------------------------------------------------------- distill: OOM


def test_out_of_memory_in_a_step_keeps_the_last_complete_state_and_resumes_exactly(
    tiny_mnist, buffer_dir, straight_run, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    original = distill.MatchingStep.step
    calls = []

    def step_out_of_memory_at_2(self, state):
        calls.append(state.iteration + 1)
        if calls == [1, 2]:  # once, in iteration 2 (checkpoints are due at 0, 2 and 4)
            raise torch.cuda.OutOfMemoryError(OOM)
        return original(self, state)

    monkeypatch.setattr(distill.MatchingStep, "step", step_out_of_memory_at_2)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    line = assert_one_fault_line(
        result, faults.EXIT_OUT_OF_MEMORY, "out of memory (CUDA out of memory.",
        "--unroll memory", "The last complete state (iteration 1)",
        str(out / distill.CHECKPOINT_NAME), f"continue with 'ddpp distill --resume {out} "
        "--unroll memory'",
    )  # fmt: skip
    assert line.endswith("'.")
    assert checkpoint_iteration(out) == 1  # written when the step failed
    assert [r["iteration"] for r in without_timing(out)] == [0, 1]

    monkeypatch.setattr(distill.MatchingStep, "step", original)
    resumed = invoke(*resume_args(tiny_mnist, out))  # same settings: bit for bit
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(straight_run, out)


def test_out_of_memory_inside_the_unroll_of_iteration_1(tiny_mnist, buffer_dir, tmp_path,
                                                         monkeypatch):  # fmt: skip
    """The generators have advanced when the step fails: the checkpoint has them as before."""
    out = tmp_path / "run"

    def match_out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(OOM)

    monkeypatch.setattr(distill.step, "match", match_out_of_memory)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    assert_one_fault_line(result, 3, "The last complete state (iteration 0)")
    saved = store.read(out / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    fresh = distill.DistillState.start(
        torch.zeros(1, 1, 1, 1), 0.01, [0, 1], seed=0, lr_img=1, lr_lr=1, device="cpu"
    )
    for name in distill.GENERATORS:
        assert torch.equal(saved.tensors[f"rng_{name}"], fresh.generators[name].get_state())
    assert saved.metadata["expert_position"] == 0


# ------------------------------------------------------------------------ distill: full disk


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_writes_nothing_more(
    tiny_mnist, buffer_dir, straight_run, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    real_fsync = store.os.fsync
    attempts: list[str] = []
    after_failure: list[str] = []
    before: dict[str, bytes] = {}

    def disk_full_at_the_second_checkpoint(fd: int) -> None:
        name = Path(_fd_path(fd)).name
        if before:
            after_failure.append(name)
        if name.startswith(f".{distill.CHECKPOINT_NAME}."):
            attempts.append(name)
            if len(attempts) == 2:  # the checkpoint of iteration 2
                before["checkpoint"] = (out / distill.CHECKPOINT_NAME).read_bytes()
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(store.os, "fsync", disk_full_at_the_second_checkpoint)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    assert_one_fault_line(
        result, faults.EXIT_DISK_FULL,
        f"no space left to write {out / distill.CHECKPOINT_NAME} (No space left on device)",
        "The last checkpoint (iteration 0) is intact in",
        f"continue with 'ddpp distill --resume {out}'",
    )  # fmt: skip
    assert len(attempts) == 2 and after_failure == []  # no second attempt, no other write
    assert (out / distill.CHECKPOINT_NAME).read_bytes() == before["checkpoint"]
    assert not list(out.glob(".*.tmp"))

    monkeypatch.setattr(store.os, "fsync", real_fsync)
    resumed = invoke(*resume_args(tiny_mnist, out))
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(straight_run, out)


# ------------------------------------------------------------------------ permission denied


def test_permission_denied_creating_the_run_folder_exits_5(
    tiny_mnist, buffer_dir, tmp_path, monkeypatch
):
    out = tmp_path / "locked" / "run"
    real_mkdir = Path.mkdir

    def denied_mkdir(self, *args, **kwargs):
        if self == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", denied_mkdir)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    assert_one_fault_line(
        result, faults.EXIT_CANNOT_WRITE, f"cannot write {out} (Permission denied)"
    )
    assert not out.exists()


def test_permission_denied_writing_into_the_run_folder_exits_5(
    tiny_mnist, buffer_dir, tmp_path, monkeypatch
):
    """The very first write fails: no checkpoint to continue from, so none is named."""
    out = tmp_path / "run"

    def denied_replace(source, target):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(store.os, "replace", denied_replace)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    line = assert_one_fault_line(result, faults.EXIT_CANNOT_WRITE, "cannot write", str(out))
    assert "continue with" not in line
    assert not list(out.glob(".*.tmp")) and not (out / distill.CHECKPOINT_NAME).exists()


# ------------------------------------------------------------- best never newer than checkpoint


@pytest.fixture
def improving_validation(monkeypatch) -> None:
    """Validation that finds a new best at every validation point (no networks trained)."""

    def validate(self, images, labels, lr, iteration):
        return 0.1 + iteration / 100, 0.01

    monkeypatch.setattr(distill.Validation, "__call__", validate)


@pytest.mark.usefixtures("improving_validation")
def test_the_best_set_is_written_after_the_checkpoint_of_its_iteration(
    tiny_mnist, buffer_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    real_write = store.write
    written: list[tuple[str, int]] = []

    def recording_write(path, tensors, format, metadata):
        written.append((Path(path).name, metadata["iteration"]))
        return real_write(path, tensors, format, metadata)

    monkeypatch.setattr(store, "write", recording_write)
    extra = ["--eval-every", 1, "--checkpoint-every", 100]  # checkpoints only for the bests
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out, *extra))
    assert result.exit_code == 0, result.output
    bests = [(i, it) for i, (name, it) in enumerate(written) if name == distill.BEST_NAME]
    assert [iteration for _, iteration in bests] == [0, 1, 2, 3, 4]
    for position, iteration in bests:
        assert written[position - 1] == (distill.CHECKPOINT_NAME, iteration)
    assert store.read_metadata(out / distill.BEST_NAME)["iteration"] == 4


@pytest.mark.usefixtures("improving_validation")
def test_a_stop_between_checkpoint_and_best_set_is_repaired_on_resume(
    tiny_mnist, buffer_dir, tmp_path, monkeypatch
):
    straight, out = tmp_path / "straight", tmp_path / "run"
    assert invoke(*distill_args(tiny_mnist, buffer_dir, straight)).exit_code == 0
    real_write = store.write

    def disk_full_at_the_last_best(path, tensors, format, metadata):
        if Path(path).name == distill.BEST_NAME and metadata["iteration"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, tensors, format, metadata)

    monkeypatch.setattr(store, "write", disk_full_at_the_last_best)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    assert_one_fault_line(
        result, faults.EXIT_DISK_FULL, f"no space left to write {out / distill.BEST_NAME}",
        "The last complete state (iteration 4) is in",
    )  # fmt: skip
    assert checkpoint_iteration(out) == 4  # the checkpoint came first...
    assert store.read_metadata(out / distill.BEST_NAME)["iteration"] == 2  # ...the best after

    monkeypatch.setattr(store, "write", real_write)
    resumed = invoke(*resume_args(tiny_mnist, out))  # nothing left to iterate: only repair
    assert resumed.exit_code == 0, resumed.output
    assert store.read_metadata(out / distill.BEST_NAME)["iteration"] == 4
    assert_same_run(straight, out)


# ----------------------------------------------------------------------------- buffer: OOM


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def buffer_args(data_dir: Path, out: Path) -> list[object]:
    return ["buffer", "--dataset", "mnist", "--data-dir", data_dir, "--no-download", "--out",
            out, "--experts", 3, "--epochs", 2, "--batch-size", 64, "--image-size", 8,
            "--device", "cpu", "--quiet"]  # fmt: skip


@pytest.mark.slow
def test_out_of_memory_mid_expert_keeps_the_finished_ones_and_a_rerun_completes(
    tiny_mnist, tmp_path, monkeypatch
):
    straight = tmp_path / "straight"
    assert invoke(*buffer_args(tiny_mnist, straight)).exit_code == 0
    out = tmp_path / "b"
    original = buffer_train.train_epoch
    epochs = []

    def epoch_out_of_memory(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == 4:  # the second epoch of expert 1
            raise torch.cuda.OutOfMemoryError(OOM)
        return original(*args, **kwargs)

    monkeypatch.setattr(buffer_train, "train_epoch", epoch_out_of_memory)
    result = invoke(*buffer_args(tiny_mnist, out))
    assert_one_fault_line(
        result, faults.EXIT_OUT_OF_MEMORY, "reduce memory with a smaller --parallel",
        f"1 of 3 experts are finished and kept in {out}",
        "the same command with a smaller --parallel continues with the missing ones",
    )  # fmt: skip
    assert sorted(buffer_engine.expert_files(out)) == [0]
    kept = _sha(buffer_engine.expert_path(out, 0))
    assert_same_file(buffer_engine.expert_path(out, 0), buffer_engine.expert_path(straight, 0))

    monkeypatch.setattr(buffer_train, "train_epoch", original)
    assert invoke(*buffer_args(tiny_mnist, out)).exit_code == 0
    assert _sha(buffer_engine.expert_path(out, 0)) == kept  # not rewritten
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in straight.iterdir())
    for path in straight.iterdir():
        assert_same_file(out / path.name, path)


def assert_same_file(a: Path, b: Path) -> None:
    """Equal tensors and metadata (safetensors orders its header keys at random), or bytes."""
    if a.suffix != ".safetensors":
        assert a.read_bytes() == b.read_bytes(), a.name
        return
    first, second = (store.read(path, store.TRAJECTORY_FORMAT) for path in (a, b))
    assert first.metadata == second.metadata, a.name
    assert first.tensors.keys() == second.tensors.keys()
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)


def test_a_bug_is_not_a_fault_and_keeps_its_traceback(tiny_mnist, buffer_dir, tmp_path,
                                                       monkeypatch):  # fmt: skip
    """Anything else still escapes (CliRunner keeps it), after the state was checkpointed."""
    out = tmp_path / "run"

    def buggy_step(self, state):
        raise ValueError("a bug")

    monkeypatch.setattr(distill.MatchingStep, "step", buggy_step)
    result = invoke(*distill_args(tiny_mnist, buffer_dir, out))
    assert result.exit_code == 1
    assert isinstance(result.exception, faults.StageFailed)
    assert isinstance(result.exception.cause, ValueError)
    assert "iteration 0" in str(result.exception) and checkpoint_iteration(out) == 0


# ------------------------------------------------------------------------- ddpp run's distill

RUN_TINY = [
    "--profile", "quick", "--no-download", "--device", "cpu", "--image-size", 8,
    "--train-subset", 80, "--iterations", 3, "--syn-steps", 2, "--expert-epochs", 1,
    "--max-start-epoch", 2, "--lr-img", 100, "--lr-lr", 1e-7, "--runs", 1, "--epochs", 2,
    "--test-subset", 20, "--quiet",
]  # fmt: skip


def test_run_keeps_the_distill_state_and_continues_with_unroll_memory(
    tiny_mnist, tmp_path, monkeypatch
):
    out, buffer = tmp_path / "run", tmp_path / "buffer"
    args = ["run", "--dataset", "mnist", "--ipc", 1, "--data-dir", tiny_mnist, "--out", out,
            "--buffer", buffer, *RUN_TINY]  # fmt: skip
    original = distill.MatchingStep.step

    def step_out_of_memory_at_2(self, state):
        if state.iteration == 1:
            raise torch.cuda.OutOfMemoryError(OOM)
        return original(self, state)

    monkeypatch.setattr(distill.MatchingStep, "step", step_out_of_memory_at_2)
    result = invoke(*args)
    assert_one_fault_line(
        result, faults.EXIT_OUT_OF_MEMORY,
        "reduce memory with --unroll memory, a smaller --unroll-budget, --batch-syn or --parallel.",
        f"The last complete state (iteration 1) is in {out / distill.CHECKPOINT_NAME}",
        f"continue by running the same command again with --out {out} --unroll memory",
    )  # fmt: skip
    assert checkpoint_iteration(out) == 1

    monkeypatch.setattr(distill.MatchingStep, "step", original)
    resumed = invoke(*args, "--unroll", "memory")
    assert resumed.exit_code == 0, resumed.output
    assert distill.saved_config(out).unroll == "memory"
    assert [r["iteration"] for r in without_timing(out)] == [0, 1, 2, 3]


# ---------------------------------------------------------------------- the other commands


@pytest.mark.parametrize(
    ("error", "status", "fragment"),
    [
        (torch.cuda.OutOfMemoryError(OOM), 3, "; reduce memory with a smaller --parallel or "
         "--batch-size."),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                      "memory"), 3, "out of memory ([enforce fail at alloc_cpu.cpp:117]"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/run.json"), 4, "/x/run.json"),
    ],
)  # fmt: skip
def test_evaluate_faults_are_one_line(straight_run, monkeypatch, error, status, fragment):
    from ddpp_cli.engine import evaluate

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(evaluate, "evaluate_set", failing)
    result = invoke("evaluate", straight_run, "--device", "cpu", "--quiet")
    line = assert_one_fault_line(result, status, fragment)
    levers = "a smaller --parallel or --batch-size"
    assert line == f"error: {faults.describe(error, memory_levers=levers).message}"  # alone
