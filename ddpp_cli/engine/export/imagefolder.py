"""The ImageFolder export: ``NN_<class>/NNNN.png`` pictures plus ``set.json`` (what
``ddpp visualize --export`` writes; the writer lives with the pictures in
:mod:`ddpp_cli.engine.visualize.export`).

torchvision's ``ImageFolder`` reads the folder back with the set's labels as class indices;
``set.json`` keeps the labels, the learned lr and, for a set with label vectors, the vectors
(``targets``, one list per image in set order) with their mode, loss and temperature.
"""

from __future__ import annotations

from ddpp_cli.engine.export.registry import Exported, ExportFormat, ExportRequest
from ddpp_cli.engine.visualize.export import EXPORT_MANIFEST, export_folder


def write(request: ExportRequest) -> Exported:
    """Write the PNGs and ``set.json`` of ``request.distilled`` into ``request.out_dir``."""
    out = request.out_dir
    manifest = export_folder(request.distilled, out, zca_path=request.zca_path)
    files = (out / EXPORT_MANIFEST, *(out / relative for relative in manifest["files"]))
    notes = ("pixels are rounded to 8 bits: the PNGs are a view, not the exact tensors.",)
    return Exported(files, notes)


FORMAT = ExportFormat(
    name="imagefolder",
    title="torchvision ImageFolder",
    writes=f"NN_<class>/NNNN.png + {EXPORT_MANIFEST}",
    soft_labels=f"{EXPORT_MANIFEST} 'targets' (one list per image, set order)",
    writer=write,
)
