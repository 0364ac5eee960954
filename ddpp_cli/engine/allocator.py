"""Freed CPU memory kept for reuse during a distillation, instead of handed back to the kernel.

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves large blocks (32 MiB
and up, e.g. a first-layer activation of 100 CIFAR images: 52 MB) with a fresh ``mmap`` and
unmaps them on ``free``, and trims its heap whenever enough of its top is free. A distillation
iteration builds and frees its whole unrolled graph (7 GB at IPC 10, N 20), so every iteration
the kernel faults those pages in again and zeroes them: measured on the 2-core development CPU,
9 million page faults and 12–18 s of system time in a 22 s iteration (docs/performance.md).

Within :func:`freed_memory_kept` glibc serves every block from its heap (``M_MMAP_MAX`` 0) and
never trims it (``M_TRIM_THRESHOLD`` −1), so what one iteration frees, the next reuses without a
fault: the iteration then takes 13–15 s there. The price: the process's memory stays at its
peak (plus glibc's fragmentation, up to ~30 % measured) until the block ends; then malloc's
defaults come back and the kept memory is returned (``malloc_trim``). The distillation loop runs
in it unless ``DDPP_MALLOC=system``; other stages (training experts, evaluation) keep malloc's
defaults, where the gain is smaller (10 %) and the fragmentation larger (1.6× the peak).
Elsewhere than glibc (macOS, Windows, musl) nothing changes.
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
_DEFAULT_TRIM_THRESHOLD = 128 * 1024  # glibc's defaults, restored after the block
_DEFAULT_MMAP_MAX = 65536
_depth = 0  # nested blocks: only the outermost one restores the defaults


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


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no mmap, no trimming) until
    :func:`release_freed_memory`; True if it took effect, False where it is not glibc."""
    libc = glibc()
    if libc is None:
        return False
    no_mmap = libc.mallopt(_M_MMAP_MAX, 0)
    no_trim = libc.mallopt(_M_TRIM_THRESHOLD, -1)
    return bool(no_mmap) and bool(no_trim)


def release_freed_memory() -> None:
    """Back to malloc's defaults, and the free memory kept so far handed back to the kernel."""
    libc = glibc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)


@contextmanager
def freed_memory_kept(environ: Mapping[str, str] = os.environ) -> Iterator[bool]:
    """A block in which freed memory is kept for reuse (:func:`keep_freed_memory`) unless
    ``DDPP_MALLOC=system``; yields whether it is. Process-wide while it lasts; on leaving the
    outermost block, malloc's defaults are restored and the kept memory released."""
    global _depth
    kept = malloc_mode(environ) == "keep" and keep_freed_memory()
    _depth += 1
    try:
        yield kept
    finally:
        _depth -= 1
        if kept and _depth == 0:
            release_freed_memory()
