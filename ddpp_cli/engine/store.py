"""The one reader and writer of ddpp's files: safetensors with versioned metadata, atomic writes.

Metadata lives in the safetensors header (``__metadata__``). Safetensors only stores strings, so
``format`` and ``ddpp_version`` are kept as plain text and every other value is JSON-encoded.
The schema of each format is documented in docs/formats.md.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from ddpp_cli import __version__
from ddpp_cli.engine.errors import DdppError

TRAJECTORY_FORMAT = "ddpp.trajectory/1"
DISTILLED_FORMAT = "ddpp.distilled/1"
# A set with label vectors (soft labels or learned regression targets); version 1 still loads.
DISTILLED_FORMAT_V2 = "ddpp.distilled/2"
CHECKPOINT_FORMAT = "ddpp.checkpoint/1"
ZCA_FORMAT = "ddpp.zca/1"
SELECTION_FORMAT = "ddpp.selection/1"

_PLAIN_KEYS = ("format", "ddpp_version")


@dataclass(frozen=True)
class Stored:
    """The content of one ddpp file: its tensors and decoded metadata."""

    path: Path
    format: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file and then its folder are fsynced, so after a crash or power loss a reader sees either
    the old file or the complete new one. A failed write (a full disk, say) leaves the old file
    as it was and no temporary file behind, and raises the ``OSError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # so that the error says which file could not be written
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where the file system cannot sync folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text (manifests, JSON)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def refuse_existing(*paths: Path | None, force: bool = False) -> None:
    """DdppError (one line naming the file and ``--force``) for the first of ``paths`` that
    exists, unless ``force``; None entries are skipped. ``--force`` replaces regular files (and
    symbolic links, not what they point to) only: a folder, FIFO, device or socket is refused
    either way. Call before any work is done."""
    for path in paths:
        if path is None:
            continue
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            raise DdppError(
                f"cannot write {path}: a part of the path is a file where a folder is needed; "
                "choose another name."
            ) from None
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise DdppError(
                f"{path} exists and is {_kind_of(mode)}, not a file; --force replaces regular "
                "files only: choose another name."
            )
        if not force:
            raise DdppError(
                f"{path} already exists; pass --force to replace it, or choose another name."
            )


def _kind_of(mode: int) -> str:
    """ "a folder", "a FIFO", … for a file mode that is not a regular file's."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files left by writes that were killed; returns how many were removed."""
    removed = 0
    for leftover in Path(folder).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def encode_metadata(format: str, metadata: Mapping[str, Any]) -> dict[str, str]:
    """Safetensors header metadata: plain ``format``/``ddpp_version``, JSON for the rest."""
    encoded = {"format": format, "ddpp_version": __version__}
    for key, value in metadata.items():
        if key in _PLAIN_KEYS:
            raise ValueError(f"metadata key '{key}' is reserved")
        encoded[key] = json.dumps(value, sort_keys=True)
    return encoded


def decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`encode_metadata` (unparseable values are kept as strings)."""
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _PLAIN_KEYS:
            decoded[key] = value
            continue
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded


def write(
    path: Path, tensors: Mapping[str, torch.Tensor], format: str, metadata: Mapping[str, Any]
) -> Path:
    """Write ``tensors`` (moved to CPU, made contiguous) and metadata atomically to ``path``."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(Path(path), save_bytes(cpu, metadata=encode_metadata(format, metadata)))
    return Path(path)


def read_metadata(path: Path) -> dict[str, Any]:
    """The decoded header metadata of a safetensors file, or a DdppError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise DdppError(f"{path} does not exist or is not a file.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for broken headers
        raise DdppError(
            f"{path} is not a readable safetensors file (truncated, corrupted or another "
            f"format): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return decode_metadata(raw)


def _read_checked_metadata(path: Path, expected_format: str | tuple[str, ...]) -> dict[str, Any]:
    """The metadata of a ddpp file whose ``format`` is ``expected_format`` (or one of them)."""
    metadata = read_metadata(path)
    found = metadata.get("format")
    accepted = (expected_format,) if isinstance(expected_format, str) else expected_format
    expected_format = accepted[-1]
    if found not in accepted:
        family = expected_format.split("/")[0]
        if isinstance(found, str) and found.split("/")[0] == family:
            raise DdppError(
                f"{path} has format '{found}', but this ddpp ({__version__}) reads "
                f"'{expected_format}'; upgrade ddpp or recreate the file."
            )
        what = f"format '{found}'" if found else "no ddpp format tag"
        raise DdppError(f"{path} is not a {expected_format} file (it has {what}).")
    return metadata


def read(path: Path, expected_format: str | tuple[str, ...]) -> Stored:
    """Read a ddpp file, checking that its ``format`` is exactly ``expected_format`` (or one of
    the formats of a tuple: the versions a reader accepts, newest last)."""
    path = Path(path)
    metadata = _read_checked_metadata(path, expected_format)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise DdppError(f"{path} is truncated or corrupted: {exc}") from None
    return Stored(path=path, format=metadata["format"], tensors=tensors, metadata=metadata)


def read_shapes(path: Path, expected_format: str) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a ddpp file of ``expected_format``, read from its header only.

    A cheap check of a large file (e.g. every expert of a buffer before resuming) without loading
    its tensors; the same format errors as :func:`read`.
    """
    path = Path(path)
    _read_checked_metadata(path, expected_format)
    with safe_open(str(path), framework="pt") as handle:
        names = handle.keys()  # a safe_open handle is not a mapping: it cannot be iterated
        return {name: tuple(handle.get_slice(name).get_shape()) for name in names}


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``"key: old there vs new now; …"`` for every setting that differs between two identities
    (the settings saved in a file and the ones asked for now), keys sorted."""
    keys = sorted(set(old) | set(new))
    return "; ".join(
        f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)
    )


# ---------------------------------------------------------------------------- checked metadata

# What a metadata key must hold: (test of the decoded value, "must be …" for the error).
Check = tuple[Callable[[Any], bool], str]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_name_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def is_number_list(value: Any) -> bool:
    return isinstance(value, list) and all(is_number(v) for v in value)


def optional(check: Check) -> Check:
    """``check`` that also accepts null."""
    test, must = check
    return (lambda value: value is None or test(value)), f"{must} or null"


INT: Check = (is_int, "must be an integer")
COUNT: Check = (lambda v: is_int(v) and v >= 0, "must be a whole number")
NUMBER: Check = (is_number, "must be a number")
TEXT: Check = (lambda v: isinstance(v, str), "must be a text")
FLAG: Check = (lambda v: isinstance(v, bool), "must be true or false")
OBJECT: Check = (lambda v: isinstance(v, dict), "must be an object")
NAMES: Check = (is_name_list, "must be a list of names")
NUMBERS: Check = (is_number_list, "must be a list of numbers")
INTS: Check = (
    lambda v: isinstance(v, list) and all(is_int(i) for i in v),
    "must be a list of integers",
)


def unusable(path: Path, what: str, key: str, problem: str, remedy: str) -> DdppError:
    """``"PATH is not a usable WHAT: 'key' PROBLEM; REMEDY."``: the one line for a file whose
    metadata key is missing or wrongly typed."""
    return DdppError(f"{path} is not a usable {what}: '{key}' {problem}; {remedy}.")


def shown(value: Any) -> str:
    """``value``'s repr, cut to a short single line for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def check_keys(
    path: Path,
    metadata: Mapping[str, Any],
    table: Mapping[str, Check],
    *,
    what: str,
    remedy: str,
    required: tuple[str, ...] = (),
    prefix: str = "",
) -> None:
    """DdppError (:func:`unusable`) for the first key of ``table`` that ``metadata`` holds with
    a value its check refuses, or the first of ``required`` it lacks."""
    for key, (test, must) in table.items():
        if key not in metadata:
            if key in required:
                raise unusable(path, what, prefix + key, "is missing", remedy)
            continue
        if not test(metadata[key]):
            raise unusable(path, what, prefix + key, f"{must} (got {shown(metadata[key])})", remedy)


def require_tensor(stored: Stored, name: str, ndim: int | None = None) -> torch.Tensor:
    """The tensor ``name`` of a stored file, checked for presence and rank."""
    tensor = stored.tensors.get(name)
    if tensor is None:
        raise DdppError(f"{stored.path} has no tensor '{name}'; the file is incomplete.")
    if ndim is not None and tensor.ndim != ndim:
        raise DdppError(
            f"{stored.path}: tensor '{name}' has {tensor.ndim} dimensions, expected {ndim}."
        )
    return tensor
