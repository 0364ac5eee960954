"""Freed memory kept for reuse during distillation (glibc's malloc), and the DDPP_MALLOC switch."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import allocator
from ddpp_cli.engine.errors import DdppError
from tests.conftest import assert_one_line_error

# Page faults of touching a freshly malloc'd 64 MiB block (after one was freed), inside the
# block that keeps freed memory and after it.
_REFAULTS = """
import ctypes, resource, sys
from ddpp_cli.engine import allocator
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 * 2**20
def faults_of_touching():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
with allocator.freed_memory_kept({"DDPP_MALLOC": sys.argv[1]}) as kept:
    faults_of_touching()
    inside = faults_of_touching()
after = faults_of_touching()
print(kept, inside, after)
"""
HUGE_PAGES = 64 * 2**20 // 2**21


@pytest.mark.parametrize(
    ("value", "mode"), [(None, "keep"), ("", "keep"), ("keep", "keep"), (" System ", "system")]
)
def test_malloc_mode_reads_the_environment(value, mode):
    environ = {} if value is None else {allocator.MALLOC_ENV: value}
    assert allocator.malloc_mode(environ) == mode


def test_an_unknown_malloc_mode_is_a_user_error_naming_the_choices():
    with pytest.raises(DdppError, match=r"DDPP_MALLOC='fast'.*keep.*system"):
        allocator.malloc_mode({allocator.MALLOC_ENV: "fast"})


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """A fresh process's allocator, its glibc calls recorded instead of made."""
    made: list[str] = []
    monkeypatch.setattr(allocator, "_kept", None)
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: made.append("keep") or True)
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: made.append("release"))
    return made


def test_system_mode_leaves_malloc_alone(calls):
    with allocator.freed_memory_kept({allocator.MALLOC_ENV: "system"}) as kept:
        assert kept is False
    assert calls == []


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_TRIM_THRESHOLD_": "1000000"},
        {"MALLOC_MMAP_MAX_": "0"},
        {"MALLOC_MMAP_THRESHOLD_": "4096"},
        {"MALLOC_TOP_PAD_": "0"},
        {"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=1"},
    ],
)
def test_a_users_own_malloc_settings_win(calls, environ):
    assert allocator.users_malloc_settings(environ)
    with allocator.freed_memory_kept(environ) as kept:
        assert kept is False
    assert calls == []


def test_unrelated_tunables_do_not_count():
    assert allocator.users_malloc_settings({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) == []
    assert allocator.users_malloc_settings({"MALLOC_ARENA_MAX": "2"}) == []


def test_the_setting_is_made_once_per_process_and_each_block_returns_free_memory(calls):
    with allocator.freed_memory_kept({}), allocator.freed_memory_kept({}):
        pass
    assert calls == ["keep", "release"]  # only the outermost block releases
    assert allocator.keep_for_process({}) is True  # decided: no second mallopt
    with allocator.freed_memory_kept({allocator.MALLOC_ENV: "system"}) as kept:
        assert kept is True  # the process already keeps it: the setting is the process's
    assert calls == ["keep", "release", "release"]


@pytest.mark.slow
@pytest.mark.skipif(allocator.glibc() is None, reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults_until_the_block_ends():
    found = {}
    for mode in ("system", "keep"):
        done = subprocess.run(
            [sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, check=True
        )
        kept, inside, after = done.stdout.split()
        assert kept == str(mode == "keep")
        found[mode] = (int(inside), int(after))
    # At least one fault per 2 MiB (huge pages where THP is "always"; 4 KiB pages: 16,384).
    assert found["system"][0] >= HUGE_PAGES  # mmap'd afresh each time, faulted in again
    assert found["keep"][0] < 8  # the freed block handed out again, already resident
    assert found["keep"][1] >= HUGE_PAGES  # the kept memory released (malloc_trim) at the end


def test_the_distillation_loop_runs_in_the_block(monkeypatch, tiny_buffer, tiny_mnist, tmp_path):
    from ddpp_cli.engine import distill
    from ddpp_cli.engine.distill import run as run_module
    from tests.test_distill import run, small_config

    inside = []

    @contextlib.contextmanager
    def recording(environ=None):
        inside.append(True)
        yield True
        inside.append(False)

    def loop(*args, **kwargs):
        assert inside == [True]  # the iterations run inside the block
        return original(*args, **kwargs)

    original = run_module._loop
    monkeypatch.setattr(allocator, "freed_memory_kept", recording)
    monkeypatch.setattr(run_module, "_loop", loop)
    run(small_config(iterations=1), tmp_path / "run", tiny_buffer, tiny_mnist)
    assert inside == [True, False]
    assert (tmp_path / "run" / distill.DISTILLED_NAME).is_file()


def test_the_executable_refuses_an_unknown_malloc_mode_in_one_line():
    result = CliRunner().invoke(app, ["visualize", "nothing"], env={allocator.MALLOC_ENV: "x"})
    assert_one_line_error(result, "DDPP_MALLOC", "keep", "system")
