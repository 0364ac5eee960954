"""Export a distilled set as another tool's files (``ddpp export``): the registry
(:mod:`.registry`), one module per format declaring its :class:`ExportFormat`, and their
registration below, in ``--format``'s order. Adding a format is one module and one entry."""

from __future__ import annotations

from pathlib import Path

from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.export import dc, ddranking, imagefolder, mtt
from ddpp_cli.engine.export.registry import (
    Exported,
    ExportFormat,
    ExportRequest,
    get_format,
    list_formats,
    register,
)
from ddpp_cli.engine.export.spaces import check_out_folder

for _format in (mtt.FORMAT, dc.FORMAT, ddranking.FORMAT, imagefolder.FORMAT):
    register(_format)


def export_set(
    distilled: DistilledSet,
    format_name: str,
    out_dir: Path,
    *,
    zca_path: Path | None = None,
    data_root: Path | None = None,
    download: bool = True,
) -> Exported:
    """Write ``distilled`` into the new or empty ``out_dir`` as ``format_name``'s files."""
    entry = get_format(format_name)
    check_out_folder(out_dir)
    request = ExportRequest(distilled, Path(out_dir), zca_path, data_root, download)
    written = entry.writer(request)
    if distilled.targets is None or not entry.soft_labels:
        return written
    where = f"the set's {distilled.label_text} are in {entry.soft_labels}."
    return Exported(written.files, (*written.notes, where))


__all__ = [
    "ExportFormat",
    "ExportRequest",
    "Exported",
    "export_set",
    "get_format",
    "list_formats",
    "register",
]
