"""Where ddpp keeps things: the data home, every folder's file names, stamped folder names, and
the one guard for a new or empty output folder.

Every stage names its files from here, so a folder written by one stage is found by the others
under the same names, and ``platformdirs`` is asked once (:func:`data_home`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

import platformdirs

from ddpp_cli.engine.errors import DdppError

APP_NAME = "ddpp"
TEMPORARY_SUFFIX = ".tmp"  # store's atomic writes; never "another tool's file"
LOCK_NAME = ".ddpp.lock"  # held by the one process writing a folder (:func:`writing`)

# The data home's sub-folders.
DATASETS_DIRNAME = "datasets"
BUFFERS_DIRNAME = "buffers"
RUNS_DIRNAME = "runs"
RECORDS_DIRNAME = "evaluations"  # evaluation records (also beside a set: DIR/evaluations/)

# A buffer folder (ddpp buffer).
MANIFEST_NAME = "buffer.json"
ZCA_NAME = "zca.safetensors"
# Under the data home: the ZCA of a method without buffer that whitens (KIP's), per dataset.
ZCA_CACHE_DIRNAME = "zca"

# A distillation folder (ddpp distill).
CHECKPOINT_NAME = "checkpoint.safetensors"
DISTILLED_NAME = "distilled.safetensors"
BEST_NAME = "best.safetensors"
METRICS_NAME = "metrics.jsonl"
SNAPSHOTS_DIRNAME = "snapshots"  # iter_NNNNNN.safetensors with --snapshot-every (for --animate)
DISTILL_SUMMARY_NAME = "summary.json"

# A pipeline folder (ddpp run): the distillation folder's files plus these.
RUN_SUMMARY_NAME = "run.json"
GRID_NAME = "grid.png"
CURVES_NAME = "curves.png"

# A comparison folder (ddpp run --compare).
COMPARE_MARKDOWN_NAME = "compare.md"
COMPARE_JSON_NAME = "compare.json"
COMPARE_CHART_NAME = "compare.png"  # the table as a chart
COMPARE_CHART_SVG_NAME = "compare.svg"  # the same, when 'ddpp visualize' writes it there
ROWS_DIRNAME = "compare"  # one sub-folder per row
ROW_NAME = "row.json"
ROW_SET_NAME = "set.safetensors"  # a coreset row's set (run 0's coreset)
ROW_RUN_DIRNAME = "run"  # a distilled row's run folder

# An image folder dataset's decode cache.
CACHE_DIRNAME = ".ddpp-cache"

STAMP_FORMAT = "%Y%m%d-%H%M%S"


def data_home() -> Path:
    """ddpp's data folder (``platformdirs``' user data folder for ddpp): the one place asked."""
    return platformdirs.user_data_path(APP_NAME)


def stamped(base: str, now: datetime | None = None) -> str:
    """``base-YYYYmmdd-HHMMSS``: the name of a folder made for one invocation."""
    return f"{base}-{(now or datetime.now()).strftime(STAMP_FORMAT)}"


def default_runs_folder(base: str, now: datetime | None = None) -> Path:
    """``<data home>/runs/<base>-<timestamp>``: where a run goes when no ``--out`` is given."""
    return data_home() / RUNS_DIRNAME / stamped(base, now)


def check_output_folder(
    folder: Path, own: Iterable[str], what: str, *, option: str = "--out"
) -> None:
    """DdppError when ``folder`` cannot receive a ``what`` (e.g. "ddpp run"): it is a file, or
    it holds entries other than ``own`` names (and temporaries of an interrupted write). A
    folder that does not exist yet, or is empty, or holds only ``own`` entries is fine."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DdppError(f"{folder} is a file, not a run folder; give a new or empty {option}.")
    if not folder.is_dir():
        return
    known = {*own, LOCK_NAME}
    others = sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name not in known and not entry.name.endswith(TEMPORARY_SUFFIX)
    )
    if others:
        listed = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        raise DdppError(
            f"{folder} holds other files ({listed}), not a {what}; give a new or empty {option} "
            "so that nothing is mixed with them."
        )


@contextlib.contextmanager
def writing(folder: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder`` for this process while the block writes into it: an exclusive
    ``fcntl.flock`` on ``folder/.ddpp.lock``, released by the kernel when the process ends
    however it ends. A second writer gets a DdppError naming the holder's pid. On leaving, the
    lock file goes, and so does the folder if this call made it and nothing was written.
    ``enabled`` False (a torchrun rank other than 0, whose rank 0 holds it) does nothing; so
    does a system without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks of this kind
        enabled = False
    if not enabled:
        yield
        return
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    descriptor = _locked(lock, fcntl)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still held: a waiting writer's next look finds no stale file
        os.close(descriptor)
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a refusal before any work leaves nothing


def _locked(lock: Path, fcntl) -> int:
    """A descriptor of ``lock`` holding its exclusive flock. A lock file unlinked by the holder
    as it left, between our open and our flock, is opened again (the lock must be the file's
    that is at the path now)."""
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(descriptor)
            raise DdppError(
                f"{lock.parent} is being written by another ddpp process (pid {holder}); wait "
                "for it to finish or stop it, or give another --out."
            ) from None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        held = os.fstat(descriptor)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return descriptor
        os.close(descriptor)  # the file we locked is gone: lock the one there now
