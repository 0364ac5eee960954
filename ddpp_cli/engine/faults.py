"""Faults of the environment (not of the user, not bugs): out of memory, a full disk, a path
that cannot be written. Each gets one line saying what failed and what to do, and its own exit
status, documented in docs/cli.md next to 0 (done), 1 (diverged), 2 (bad input), 130 (interrupted).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import torch

EXIT_OUT_OF_MEMORY = 3
EXIT_DISK_FULL = 4
EXIT_CANNOT_WRITE = 5

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_PERMITTED = {errno.EACCES, errno.EPERM, errno.EROFS}
_VANISHED = {errno.ENOENT}
# A path of the wrong kind or that the OS refuses: each says what is wrong with the path.
_BAD_PATH = {
    errno.EEXIST: "{target} exists and is not a folder; give a new or empty folder, or move the "
    "file away",
    errno.ENOTDIR: "a part of {target} is a file where a folder is needed; give a path whose "
    "folders are folders",
    errno.EISDIR: "{target} is a folder where a file is needed; give a file name, or move the "
    "folder away",
    errno.ENAMETOOLONG: "the path {target} is too long for the file system; choose a shorter "
    "name or folder",
    errno.ELOOP: "{target} goes round a loop of symbolic links; give a path that resolves",
    errno.ENOTEMPTY: "{target} is a folder that is not empty; give a new or empty one",
}
# CUDA/MPS/HIP say "out of memory"; torch's CPU allocator "can't allocate memory" (ENOMEM).
_OOM_MARKERS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate")


@dataclass(frozen=True)
class Fault:
    """What the CLI prints (one line) and the exit status, for an environment fault."""

    status: int
    message: str


class StageFailed(Exception):
    """An exception (its ``__cause__``) escaped a long ``stage`` ("buffer", "distill") after the
    stage's finished work was made safe on disk: ``kept`` says what and where, as a clause such
    as "the last complete state (iteration 41) is in RUN/checkpoint.safetensors"; ``folder`` is
    the stage's output.

    The engine raises it ``from`` the original exception; the CLI describes the cause (an
    environment fault, or a bug with its traceback) and adds ``kept`` and ``continuation``, how
    to continue, which the caller that knows its command line sets.
    """

    def __init__(self, stage: str, kept: str, folder: Path) -> None:
        super().__init__(kept)
        self.stage = stage
        self.kept = kept
        self.folder = folder
        self.continuation = ""

    @property
    def out_of_memory(self) -> bool:
        return self.cause is not None and is_out_of_memory(self.cause)

    @property
    def cause(self) -> BaseException | None:
        return self.__cause__


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's and the generic torch OutOfMemoryError, MPS's and CPU allocators' RuntimeErrors,
    and Python's MemoryError."""
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


def describe(exc: BaseException, *, memory_levers: str = "") -> Fault | None:
    """The fault ``exc`` is, with its line and status; None when it is not an environment fault.

    ``memory_levers`` names the options that reduce memory in the failing stage, e.g.
    ``"--unroll memory, a smaller --batch-syn or a smaller --parallel"``.
    """
    if is_out_of_memory(exc):
        levers = f"; reduce memory with {memory_levers}" if memory_levers else ""
        where = first_line(exc)
        return Fault(EXIT_OUT_OF_MEMORY, f"out of memory ({where}){levers}.")
    if isinstance(exc, OSError) and exc.errno is not None:
        target = exc.filename or "the output folder"
        if exc.errno in _DISK_FULL:
            return Fault(
                EXIT_DISK_FULL,
                f"no space left to write {target} ({exc.strerror}); free disk space or choose "
                "another output folder, then run the same command again to continue.",
            )
        if exc.errno in _NOT_PERMITTED and exc.filename and _unreadable(exc.filename):
            return Fault(
                EXIT_CANNOT_WRITE,
                f"cannot read {target} ({exc.strerror}); make it readable for ddpp or give "
                "ddpp a copy that is.",
            )
        if exc.errno in _NOT_PERMITTED:
            return Fault(
                EXIT_CANNOT_WRITE,
                f"cannot write {target} ({exc.strerror}); make the folder writable or choose "
                "another output folder.",
            )
        if exc.errno in _BAD_PATH:
            reason = _BAD_PATH[exc.errno].format(target=_shortened(target))
            return Fault(EXIT_CANNOT_WRITE, f"{reason} ({exc.strerror}).")
        if exc.errno in _VANISHED:
            return Fault(
                EXIT_CANNOT_WRITE,
                f"{target} is missing ({exc.strerror}); was the folder moved or deleted while "
                "ddpp ran? Recreate it or choose another, then run the same command again.",
            )
    return None


def _unreadable(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists and this process may not read it: the permission error came from
    reading an input, not from writing an output."""
    try:
        return os.path.exists(path) and not os.access(path, os.R_OK)
    except (OSError, ValueError, TypeError):
        return False


def _shortened(path: str | os.PathLike, limit: int = 120) -> str:
    """``path`` as text, its middle elided when longer than ``limit`` (an over-long name)."""
    text = os.fsdecode(path) if not isinstance(path, str) else path
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}…{text[-(limit // 2) :]}"


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type when empty), at most 160 characters."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "…"
