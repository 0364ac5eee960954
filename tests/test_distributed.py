"""Scale-out under torchrun: ranks split the work, write each file once, match one process."""

from __future__ import annotations

import socket
import sys
import time

import pytest
import torch

from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import distributed
from ddpp_cli.engine.distributed import World
from ddpp_cli.engine.errors import DdppError


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
        dataset="mnist", experts=3, epochs=1, batch_size=64, seed=3, test_subset=10, zca=True,
        image_size=8,
    )  # fmt: skip
    folder = tmp_path / "buf"
    buffer_engine.train_buffer(
        config, folder, data_root=tiny_mnist, download=False, world=LoneRank(1, 2, 1)
    )
    assert sorted(p.name for p in folder.iterdir()) == ["expert_0001.safetensors"]


# The two-rank end-to-end run of buffer and evaluate (torchrun, gloo) is
# test_distill_distributed.py's test_torchrun_splits_the_work_and_matches_one_process: one torchrun
# launch there makes every two-rank run of the suite.


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
