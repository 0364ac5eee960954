"""Freed CPU memory kept for reuse by a process that distils, instead of handed back to the kernel.

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves large blocks (32 MiB
and up, e.g. a first-layer activation of 100 CIFAR images: 52 MB) with a fresh ``mmap`` and
unmaps them on ``free``, and trims its heap whenever enough of its top is free. A distillation
iteration builds and frees its whole unrolled graph (7 GB at IPC 10, N 20), so every iteration
the kernel faults those pages in again and zeroes them: measured on the 2-core development CPU,
9 million page faults and 12–18 s of system time in a 22 s iteration (docs/performance.md).

:func:`keep_for_process` makes glibc serve every block from its heap (``M_MMAP_MAX`` 0) and never
trim it (``M_TRIM_THRESHOLD`` −1), so what one iteration frees, the next reuses without a fault:
the iteration then takes 13–15 s there. It is a property of the whole process from then on:
glibc turns its dynamic mmap/trim thresholds off for good at the first ``mallopt``, so "malloc's
defaults" cannot be restored afterwards, and the stages after a distillation (evaluation in
``ddpp run``) run under the same setting — measured, they fault less and spend less system
time, at a higher resident size (``benchmarks/malloc_later_stages.py``). The distillation loop
runs in :func:`freed_memory_kept`, which applies it and, when the loop ends, hands the free memory
kept so far back to the kernel (``malloc_trim``). ``ddpp run`` applies it from its start.

It is skipped with ``DDPP_MALLOC=system``, and whenever the environment already tunes glibc's
malloc (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TOP_PAD_`` or a ``glibc.malloc.*`` tunable in ``GLIBC_TUNABLES``): a user's own setting
wins. Elsewhere than glibc (macOS, Windows, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ddpp_cli.engine.errors import DdppError

MALLOC_ENV = "DDPP_MALLOC"
MALLOC_MODES = ("keep", "system")
# glibc's <malloc.h>: mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# The variables by which glibc reads a user's own malloc settings at start (mallopt(3)).
USER_MALLOC_VARIABLES = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
_kept: bool | None = None  # None: not decided yet in this process
_depth = 0  # nested blocks: only the outermost one returns the free memory


def malloc_mode(environ: Mapping[str, str] = os.environ) -> str:
    """``keep`` (the default) or ``system``, from ``DDPP_MALLOC``; DdppError on anything else."""
    value = environ.get(MALLOC_ENV, "").strip().lower() or "keep"
    if value not in MALLOC_MODES:
        raise DdppError(
            f"{MALLOC_ENV}={environ[MALLOC_ENV]!r} is not a malloc mode; use keep (reuse freed "
            "memory, the default) or system (hand it back to the kernel)."
        )
    return value


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (the one whose ``mallopt`` this module sets)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return libc


def users_malloc_settings(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The variables of ``environ`` by which a user already tunes glibc's malloc (empty: none)."""
    named = [name for name in USER_MALLOC_VARIABLES if environ.get(name, "").strip()]
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(item.strip().startswith("glibc.malloc.") for item in tunables.split(":")):
        named.append("GLIBC_TUNABLES")
    return named


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no mmap, no trimming) for the rest of
    the process; True if it took effect, False where it is not glibc."""
    libc = glibc()
    if libc is None:
        return False
    no_mmap = libc.mallopt(_M_MMAP_MAX, 0)
    no_trim = libc.mallopt(_M_TRIM_THRESHOLD, -1)
    return bool(no_mmap) and bool(no_trim)


def release_freed_memory() -> None:
    """Hand the free memory kept so far back to the kernel (the setting itself stays)."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_for_process(environ: Mapping[str, str] = os.environ) -> bool:
    """Keep freed memory for the rest of the process (:func:`keep_freed_memory`), once, unless
    ``DDPP_MALLOC=system`` or the user's own malloc settings (:func:`users_malloc_settings`);
    whether the process keeps it."""
    global _kept
    if _kept is None:
        wanted = malloc_mode(environ) == "keep" and not users_malloc_settings(environ)
        _kept = wanted and keep_freed_memory()
    return _kept


@contextmanager
def freed_memory_kept(environ: Mapping[str, str] = os.environ) -> Iterator[bool]:
    """A block (the distillation loop) run with freed memory kept (:func:`keep_for_process`);
    yields whether it is. On leaving the outermost block the free memory kept so far goes back
    to the kernel; the setting stays for the rest of the process (module docstring)."""
    global _depth
    kept = keep_for_process(environ)
    _depth += 1
    try:
        yield kept
    finally:
        _depth -= 1
        if kept and _depth == 0:
            release_freed_memory()
