"""The ImageFolder export of a distilled set: ``NN_<class>/NNNN.png`` files plus ``set.json``.

torchvision's ``ImageFolder`` reads the folder back with the set's labels as class indices.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy

from ddpp_cli.engine import store
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.visualize.files import write_bytes
from ddpp_cli.engine.visualize.pixels import pixel_images, to_pil

EXPORT_FORMAT = "ddpp.export/1"
EXPORT_MANIFEST = "set.json"


def folder_names(class_names: Sequence[str]) -> list[str]:
    """Class folder names ``NN_name``: file-system safe, unique, and sorted in class order.

    torchvision's ImageFolder numbers classes by sorting folder names, so the zero-padded index
    prefix keeps its class indices equal to the set's labels.
    """
    digits = max(2, len(str(len(class_names) - 1)))
    names = []
    for index, name in enumerate(class_names):
        safe = re.sub(r"[^\w.-]+", "_", str(name), flags=re.UNICODE).strip("._-")[:60]
        names.append(f"{index:0{digits}d}_{safe}" if safe else f"{index:0{digits}d}")
    return names


def check_export_folder(out_dir: Path, force: bool = False) -> None:
    """DdppError unless ``out_dir`` is absent or empty, or holds an earlier ddpp export and
    ``force`` allows replacing it. A folder holding anything else is refused even with force."""
    _previous_export(Path(out_dir), force)


def _previous_export(out_dir: Path, force: bool) -> dict[str, Any] | None:
    """The manifest of an earlier export in ``out_dir`` (None: absent or empty folder)."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise DdppError(f"cannot export to {out_dir}: it is a file; give a folder.")
    if not any(out_dir.iterdir()):
        return None
    manifest = out_dir / EXPORT_MANIFEST
    previous = None
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
    if not isinstance(previous, dict) or previous.get("format") != EXPORT_FORMAT:
        raise DdppError(
            f"cannot export to {out_dir}: the folder is not empty and holds no earlier ddpp "
            "export; choose a new or empty folder."
        )
    if not force:
        raise DdppError(
            f"{out_dir} already holds an export; pass --force to replace it, or choose a new "
            "or empty folder."
        )
    store.check_keys(
        manifest, previous, {"files": store.NAMES, "folders": store.NAMES},
        what="export manifest", remedy="choose a new or empty folder",
    )  # fmt: skip
    return previous


def _clear_previous_export(out_dir: Path, force: bool) -> None:
    """Remove an earlier export from ``out_dir`` (only with ``force``); refuse a folder holding
    anything else."""
    previous = _previous_export(out_dir, force)
    if previous is None:
        return
    for relative in previous.get("files", []):
        target = (out_dir / str(relative)).resolve()
        if target.parent.parent == out_dir.resolve() and target.suffix == ".png":
            target.unlink(missing_ok=True)
    for folder in previous.get("folders", []):
        path = out_dir / str(folder)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def export_folder(
    distilled: DistilledSet, out_dir: Path, zca_path: Path | None = None, force: bool = False
) -> dict[str, Any]:
    """Write every image as ``out_dir/NN_<class>/NNNN.png`` plus ``set.json``; returns the manifest.

    Pixels are the set's images with normalisation or ZCA undone, clamped to [0, 1] and rounded
    to 8 bits. ``set.json`` lists the files in set order with their labels, the learned lr, the
    class names and folders, the dataset and where the set came from (and a set's label vectors,
    ``targets``, with their mode, loss and temperature). Re-exporting into the same
    folder replaces the earlier export only with ``force``; any other non-empty folder is
    refused (see :func:`check_export_folder`).
    """
    out_dir = Path(out_dir)
    pixels = pixel_images(distilled, zca_path)
    if int(pixels.shape[1]) not in (1, 3):
        raise DdppError(f"cannot export images with {pixels.shape[1]} channels (only 1 or 3).")
    _clear_previous_export(out_dir, force)
    folders = folder_names(distilled.class_names)
    labels = distilled.labels.tolist()
    digits = max(4, len(str(max(1, distilled.ipc) - 1)))
    try:
        for folder in folders:
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DdppError(f"cannot export to {out_dir}: {exc.strerror or exc}.") from None
    seen = [0] * len(folders)
    files = []
    for index, label in enumerate(labels):
        relative = f"{folders[label]}/{seen[label]:0{digits}d}.png"
        seen[label] += 1
        buffer = io.BytesIO()
        to_pil(pixels[index]).save(buffer, format="PNG", optimize=True)
        write_bytes(out_dir / relative, buffer.getvalue())
        files.append(relative)
    manifest = {
        "format": EXPORT_FORMAT,
        "dataset": distilled.dataset,
        "source": distilled.source,
        "arch": distilled.arch,
        "lr": None if distilled.lr is None else float(str(numpy.float32(distilled.lr))),
        "ipc": distilled.ipc,
        "class_names": list(distilled.class_names),
        "folders": folders,
        "files": files,
        "labels": labels,
        "image_shape": [int(v) for v in distilled.images.shape[1:]],
        "preprocessing": distilled.preprocessing,
        "pixels": "preprocessing undone, clamped to [0, 1], 8-bit PNG (value = round(255 x))",
        "seed": distilled.seed,
    }
    if distilled.targets is not None:  # label vectors: exact float32 values, one list per image
        manifest |= {
            "targets": distilled.targets.float().tolist(),
            "label_mode": distilled.label_mode,
            "target_loss": distilled.target_loss,
            "temperature": distilled.temperature,
        }
    write_bytes(out_dir / EXPORT_MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return manifest
