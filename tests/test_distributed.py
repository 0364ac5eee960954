"""Scale-out under torchrun: ranks split the work, write each file once, match one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import distributed
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError

TOL = {"rtol": 1e-3, "atol": 2e-4}  # as test_batched.TRAJECTORY_TOL


def test_world_from_env_and_shard(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.from_env() == World(0, 1, 0)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = distributed.from_env()
    assert (world.rank, world.size, world.is_main, world.distributed) == (1, 3, False, True)
    assert world.shard(list(range(8))) == [1, 4, 7]
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(DdppError, match="RANK=3"):
        distributed.from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DdppError, match="WORLD_SIZE"):
        distributed.from_env()


def test_one_process_joins_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world, device = distributed.join_world(torch.device("cpu"))
    assert not world.distributed and device == torch.device("cpu")
    assert not torch.distributed.is_initialized()


def test_torchruns_environment_without_torchrun_is_one_line(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # left in a shell
    with pytest.raises(DdppError) as raised:
        distributed.join_world(torch.device("cpu"))
    message = str(raised.value)
    assert "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not" in message
    assert "Unset WORLD_SIZE" in message and "\n" not in message
    assert not torch.distributed.is_initialized()


def test_ranks_that_never_come_are_awaited_once_and_for_a_bounded_time(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for name, value in {**env, "DDPP_RENDEZVOUS_TIMEOUT": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "RENDEZVOUS_NOTICE_AFTER", 0.2)
    events: list[object] = []
    started = time.monotonic()
    with pytest.raises(DdppError, match=r"rank 0 waited 1 s for 2 processes .* at 127\.0\.0\.1"):
        distributed.join_world(torch.device("cpu"), on_event=events.append)
    assert time.monotonic() - started < 30
    assert [type(e).__name__ for e in events] == ["Notice"]
    assert "waiting for 2 processes" in events[0].message and "after 1 s" in events[0].message
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("DDPP_RENDEZVOUS_TIMEOUT", "0")
    with pytest.raises(DdppError, match="DDPP_RENDEZVOUS_TIMEOUT must be at least 1"):
        distributed.rendezvous_timeout()


class LoneRank(World):
    """Rank ``rank`` of a pretend world whose other ranks never show up (no process group)."""

    def barrier(self) -> None:
        pass

    def gather(self, value):
        return [value]


@pytest.mark.slow
def test_a_rank_writes_only_the_experts_it_trains(tiny_mnist, tmp_path):
    config = buffer_engine.BufferConfig(
        dataset="mnist", experts=3, epochs=1, batch_size=64, seed=3, test_subset=10, zca=True
    )
    folder = tmp_path / "buf"
    buffer_engine.train_buffer(
        config, folder, data_root=tiny_mnist, download=False, world=LoneRank(1, 2, 1)
    )
    assert sorted(p.name for p in folder.iterdir()) == ["expert_0001.safetensors"]


DRIVER = textwrap.dedent(
    """
    import sys
    from ddpp_cli.cli import app
    buffer_args, evaluate_args = sys.argv[1].split(), sys.argv[2].split()
    for args in (buffer_args, evaluate_args):
        try:
            app(args, standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
    from ddpp_cli.engine.distributed import end_process
    end_process(0)  # as ddpp's main() ends a torchrun rank
    """
)


@pytest.mark.slow
def test_torchrun_splits_the_work_and_matches_one_process(tiny_mnist, tmp_path):
    """Two gloo ranks on the CPU: buffer (batched within a rank too) and a baseline evaluation."""
    data = ["--dataset", "mnist", "--data-dir", str(tiny_mnist), "--no-download"]
    common = [*data, "--device", "cpu", "--seed", "3", "--test-subset", "20"]
    buffer_args = ["buffer", *common, "--experts", "3", "--epochs", "1", "--train-subset", "40"]
    evaluate_args = [
        "evaluate", *common, "--baseline", "random", "--ipc", "2", "--runs", "3", "--epochs", "2",
    ]  # fmt: skip
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: no network needed
    launched = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", str(script),
            " ".join([*buffer_args, "--out", str(tmp_path / "ranks"), "--parallel", "2", "-q"]),
            " ".join([*evaluate_args, "--json"]),
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    lines = launched.stdout.strip().splitlines()
    assert lines[0] == str(tmp_path / "ranks")  # rank 0 printed; rank 1 stayed quiet
    assert len(lines) == 2
    distributed_eval = json.loads(lines[1])

    runner = CliRunner()
    single = runner.invoke(app, [*buffer_args, "--out", str(tmp_path / "one"), "-q"])
    assert single.exit_code == 0, single.output
    for name in ("expert_0000", "expert_0001", "expert_0002"):
        ours = buffer_engine.load_trajectory(tmp_path / "ranks" / f"{name}.safetensors")
        theirs = buffer_engine.load_trajectory(tmp_path / "one" / f"{name}.safetensors")
        torch.testing.assert_close(ours.params, theirs.params, **TOL)
    manifest = json.loads((tmp_path / "ranks" / "buffer.json").read_text())
    assert [e["index"] for e in manifest["experts"]] == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    single_eval = runner.invoke(app, [*evaluate_args, "--json"])
    assert single_eval.exit_code == 0, single_eval.output
    expected = json.loads(single_eval.stdout)
    assert distributed_eval["accuracies"] == expected["accuracies"]
    assert distributed_eval["protocol"]["train_size"] == expected["protocol"]["train_size"]


@pytest.fixture(autouse=True)
def _no_inherited_world(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


class Ended(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


@pytest.mark.parametrize(
    ("argv", "status"), [(["--version"], 0), (["distill", "--eps", "2"], 2), (["nope"], 2)]
)
def test_main_ends_a_torchrun_rank_with_the_commands_status(monkeypatch, argv, status):
    from ddpp_cli import cli

    def end(code: int):
        raise Ended(code)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sys, "argv", ["ddpp", *argv])
    monkeypatch.setattr(distributed, "end_process", end)
    with pytest.raises(Ended) as ended:
        cli.main()
    assert ended.value.status == status
    assert distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
