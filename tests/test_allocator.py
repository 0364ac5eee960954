"""The executable's malloc setting: freed memory reused without page faults (glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ddpp_cli.cli import app
from ddpp_cli.engine import allocator
from ddpp_cli.engine.errors import DdppError
from tests.conftest import assert_one_line_error

# Allocate, touch and free 64 MiB, then count the page faults of doing it again.
_REFAULTS = """
import ctypes, resource, sys
from ddpp_cli.engine import allocator
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 * 2**20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize(
    ("value", "mode"), [(None, "keep"), ("", "keep"), ("keep", "keep"), (" System ", "system")]
)
def test_malloc_mode_reads_the_environment(value, mode):
    environ = {} if value is None else {allocator.MALLOC_ENV: value}
    assert allocator.malloc_mode(environ) == mode


def test_an_unknown_malloc_mode_is_a_user_error_naming_the_choices():
    with pytest.raises(DdppError, match=r"DDPP_MALLOC='fast'.*keep.*system"):
        allocator.malloc_mode({allocator.MALLOC_ENV: "fast"})


def test_system_mode_leaves_malloc_alone(monkeypatch):
    called = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: called.append(1) or True)
    assert allocator.configure({allocator.MALLOC_ENV: "system"}) is False
    assert called == []


@pytest.mark.skipif(allocator.glibc() is None, reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    faults = {}
    for mode in ("system", "keep"):
        done = subprocess.run(
            [sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        kept, count = done.stdout.split()
        faults[mode] = int(count)
        assert kept == str(mode == "keep")
    assert faults["system"] >= 64 * 2**20 // 4096 // 2  # mmap'd afresh: faulted page by page
    assert faults["keep"] < 100  # the freed block is handed out again, already resident


def test_the_executable_refuses_an_unknown_malloc_mode_in_one_line():
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["visualize", "nothing"], env={allocator.MALLOC_ENV: "x"})
    assert_one_line_error(result, "DDPP_MALLOC", "keep", "system")
