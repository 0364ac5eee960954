"""The process's CPU memory kept for reuse instead of handed back to the kernel (glibc malloc).

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves large blocks (32 MiB
and up, e.g. a first-layer activation of 100 CIFAR images: 52 MB) with a fresh ``mmap`` and
unmaps them on ``free``, and trims its heap whenever enough of its top is free. A distillation
iteration builds and frees its whole unrolled graph (7 GB at IPC 10, N 20), so every iteration
the kernel faults those pages in again and zeroes them: measured on the 2-core development CPU,
9 million page faults and 12–18 s of system time in a 22 s iteration (docs/performance.md).

:func:`keep_freed_memory` tells glibc to serve every block from its heap (``M_MMAP_MAX`` 0) and
never to trim it (``M_TRIM_THRESHOLD`` −1), so what one iteration frees, the next reuses without
a fault: the iteration then takes 13 s there. The price: the process keeps its peak memory
resident until it exits (the peak itself is no higher than before, up to glibc's
fragmentation). The ``ddpp`` executable does this at start unless ``DDPP_MALLOC=system``
(:func:`configure`); the engine never does it on import, so a program that imports it keeps its
own allocator settings. Elsewhere than glibc (macOS, Windows, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

from ddpp_cli.engine.errors import DdppError

MALLOC_ENV = "DDPP_MALLOC"
MALLOC_MODES = ("keep", "system")
# glibc's <malloc.h>: mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def malloc_mode(environ: Mapping[str, str] = os.environ) -> str:
    """``keep`` (the default) or ``system``, from ``DDPP_MALLOC``; DdppError on anything else."""
    value = environ.get(MALLOC_ENV, "").strip().lower() or "keep"
    if value not in MALLOC_MODES:
        raise DdppError(
            f"{MALLOC_ENV}={environ[MALLOC_ENV]!r} is not a malloc mode; use keep (reuse freed "
            "memory, the default) or system (hand it back to the kernel)."
        )
    return value


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
    """Make glibc's malloc keep freed memory for reuse (no mmap, no trimming) for the rest of the
    process; True if it took effect, False where the C library is not glibc."""
    libc = glibc()
    if libc is None:
        return False
    no_mmap = libc.mallopt(_M_MMAP_MAX, 0)
    no_trim = libc.mallopt(_M_TRIM_THRESHOLD, -1)
    return bool(no_mmap) and bool(no_trim)


def configure(environ: Mapping[str, str] = os.environ) -> bool:
    """What the ``ddpp`` executable does at start: :func:`keep_freed_memory` unless
    ``DDPP_MALLOC=system``. True if freed memory is now kept."""
    return malloc_mode(environ) == "keep" and keep_freed_memory()
