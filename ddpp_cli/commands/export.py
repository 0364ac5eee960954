"""``ddpp export``: a distilled set written as another tool's files (MTT, DC, DD-Ranking,
ImageFolder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ddpp_cli.commands import _options as opt
from ddpp_cli.commands._display import err, note, out
from ddpp_cli.commands._renamed import ZcaFileRenamedOpt
from ddpp_cli.engine import distilled, evaluate
from ddpp_cli.engine import export as export_engine

FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="The files to write: "
        + "; ".join(
            f"{name}: {export_engine.get_format(name).writes}"
            for name in export_engine.list_formats()
        )
        + ".",
        show_default=False,
    ),
]

OutOpt = Annotated[
    Path,
    typer.Option("--out", "-o", help="A new or empty folder for the files.", show_default=False),
]

ZcaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--zca-file", help="The buffer's zca.safetensors, for a ZCA set whose file moved."
    ),
]


def command(
    target: Annotated[
        Path,
        typer.Argument(
            help="A distilled-set file, or a 'ddpp distill' run folder (best.safetensors, else "
            "distilled.safetensors).",
            show_default=False,
        ),
    ],
    format_name: FormatOpt,
    out_dir: OutOpt,
    zca_file: ZcaFileOpt = None,
    zca_renamed: ZcaFileRenamedOpt = None,
    data_dir: opt.DataDirOpt = None,
    download: opt.DownloadOpt = True,
    quiet: opt.quiet_option("the folder written") = False,
) -> None:
    """Write a distilled set as another tool's files: mtt, dc, ddranking or imagefolder.

    Images go to the tool's space; --data-dir only refits DD-Ranking's ZCA for a foreign ZCA.
    """
    entry = export_engine.get_format(format_name)
    set_path = evaluate.find_set(target)
    chosen = distilled.load(set_path)
    exported = export_engine.export_set(
        chosen, entry.name, out_dir, zca_path=zca_file, data_root=data_dir, download=download
    )
    if quiet:
        _plain(str(out_dir))
        return
    count = len(exported.files)
    _plain(f"export: {out_dir}  ({entry.title}: {count} file{'s' * (count != 1)} from {set_path})")
    for path in exported.files[:_LISTED]:
        _plain(f"  {path.relative_to(out_dir)}")
    if len(exported.files) > _LISTED:
        _plain(f"  … and {len(exported.files) - _LISTED} more")
    for message in exported.notes:
        note(err, escape(message))


_LISTED = 8  # files named one per line; the rest are counted


def _plain(text: str) -> None:
    out.print(text, highlight=False, markup=False, soft_wrap=True)
