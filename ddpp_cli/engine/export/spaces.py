"""Files and spaces every export shares: torch files written atomically, and a set's images
moved into another tool's input space through pixels (untouched where the spaces agree)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import data, foreign_tools, store
from ddpp_cli.engine.distilled import DistilledSet, resolve_preprocessing
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.preprocess import Normalization, Preprocessing


def check_out_folder(out_dir: Path) -> None:
    """DdppError unless ``out_dir`` is new or empty: an export never mixes with other files,
    nor replaces an earlier export."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DdppError(f"{out_dir} is a file; give a new or empty folder as --out.")
    entries = sorted(entry.name for entry in out_dir.iterdir()) if out_dir.is_dir() else []
    if entries:
        listed = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise DdppError(
            f"{out_dir} is not empty (it holds {listed}); give a new or empty folder as --out."
        )


def write_torch(path: Path, value: Any) -> Path:
    """``torch.save(value)`` into memory, then written atomically (readable with
    ``torch.load(weights_only=True)``: tensors, lists, dicts and numbers only)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    store.atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def lr_tensor(lr: float) -> torch.Tensor:
    """The learned lr as MTT-family tools keep ``syn_lr``: a 0-d float32 tensor."""
    return torch.tensor(float(lr), dtype=torch.float32)


def tool_normalization(tool: str, dataset: str) -> Normalization | None:
    """The mean/std ``tool`` (a :mod:`~ddpp_cli.engine.foreign_tools` name) normalises
    ``dataset`` with; None where ddpp's table has none (folder datasets: their mean/std are
    computed from the data, so a set keeps its own)."""
    try:
        source = data.info(foreign_tools.normalization_source(tool, dataset))
    except DdppError:
        return None
    if source.mean is None or source.std is None:
        return None
    return Normalization(tuple(source.mean), tuple(source.std))


def same_normalization(first: Normalization | None, second: Normalization | None) -> bool:
    """Whether two normalisations have equal mean and std, value by value."""
    if first is None or second is None:
        return False
    return tuple(map(float, first.mean)) == tuple(map(float, second.mean)) and tuple(
        map(float, first.std)
    ) == tuple(map(float, second.std))


def moved(distilled: DistilledSet, target: Preprocessing, zca_path: Path | None) -> torch.Tensor:
    """The set's images in ``target``'s space: the set's own tensor (bit for bit) where its
    preprocessing is ``target``'s normalisation, else its preprocessing undone to pixels and
    ``target`` applied."""
    current = resolve_preprocessing(distilled, zca_path)
    if same_normalization(current.normalization, target.normalization):
        return distilled.images
    return target.apply(current.invert(distilled.images)).contiguous()


def in_tool_space(
    distilled: DistilledSet, tool: str, zca_path: Path | None, *, keep_zca: bool
) -> tuple[torch.Tensor, list[str]]:
    """The images as ``tool`` reads them, and notes: a ZCA set stays whitened where
    ``keep_zca`` (MTT whitens with the same maths), else goes to the tool's normalisation; a
    normalised set goes to the mean/std the tool uses for its dataset (unchanged where equal)."""
    is_zca = distilled.preprocessing.get("kind") == "zca"
    if is_zca and keep_zca:
        return distilled.images, [
            "the images are ZCA-whitened (MTT's --zca); import them with --zca-file set to "
            f"{distilled.preprocessing.get('zca_file')}."
        ]
    target = tool_normalization(tool, distilled.dataset)
    if target is None:
        if is_zca:
            raise DdppError(
                f"{distilled.dataset} has no table mean/std to normalise this ZCA set's images "
                "with; export it with --format mtt or imagefolder."
            )
        return distilled.images, []
    images = moved(distilled, Preprocessing(normalization=target), zca_path)
    notes = []
    if images is not distilled.images:
        notes.append(
            f"images converted to the mean/std {tool} uses for {distilled.dataset} "
            f"({foreign_tools.normalization_source(tool, distilled.dataset)}'s), through pixels."
        )
    return images, notes
