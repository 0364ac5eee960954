"""The registry of export formats: one frozen :class:`ExportFormat` record per format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError


@dataclass(frozen=True)
class ExportRequest:
    """One export: the set, the folder it goes to, and what a conversion may need (the set's
    ZCA file where it moved; the dataset's train split for DD-Ranking's ZCA)."""

    distilled: DistilledSet
    out_dir: Path
    zca_path: Path | None = None
    data_root: Path | None = None
    download: bool = True


@dataclass(frozen=True)
class Exported:
    """What an export wrote (paths, in writing order) and what the user should know about it."""

    files: tuple[Path, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ExportFormat:
    """One format: ``name`` (``--format``), ``title`` (the tool), ``writes`` (its files, in
    words), ``soft_labels`` (where a set's label vectors go; empty: nowhere) and ``writer``."""

    name: str
    title: str
    writes: str
    soft_labels: str
    writer: Callable[[ExportRequest], Exported]


_FORMATS: dict[str, ExportFormat] = {}


def register(entry: ExportFormat) -> ExportFormat:
    """Add ``entry`` to the registry (once per name)."""
    if entry.name in _FORMATS:
        raise ValueError(f"export format {entry.name!r} is already registered")
    _FORMATS[entry.name] = entry
    return entry


def list_formats() -> list[str]:
    """The formats' names, in registration order (``--format``'s choices)."""
    return list(_FORMATS)


def get_format(name: str) -> ExportFormat:
    """The record of ``name``; DdppError listing the choices when unknown."""
    if name not in _FORMATS:
        raise DdppError(f"unknown export format '{name}'; choose one of: {', '.join(_FORMATS)}.")
    return _FORMATS[name]
