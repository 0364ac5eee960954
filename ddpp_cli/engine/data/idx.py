"""The IDX reader: MNIST-style files (gzipped or not) found under a folder and read as tensors."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import torch

from ddpp_cli.engine.data.registry import TORCHVISION_CLASSES
from ddpp_cli.engine.errors import DdppError


def read_idx(path: Path) -> torch.Tensor:
    """Parse an IDX file of unsigned bytes (gzipped or not) into a uint8 tensor."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DdppError(
            f"{path} cannot be read ({exc}); the file is damaged, download it again."
        ) from None
    if len(data) < 4:
        raise DdppError(f"{path} is truncated: it has no complete IDX header; download it again.")
    zero_a, zero_b, dtype, ndim = data[:4]
    if zero_a or zero_b or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DdppError(
            f"{path} is not an IDX file of unsigned bytes (magic number "
            f"{data[:4].hex()}, expected 000008 followed by 01–04)."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DdppError(f"{path} is truncated inside its IDX header; download it again.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    found = len(data) - header
    if found != expected:
        problem = "is truncated" if found < expected else "has trailing bytes"
        raise DdppError(
            f"{path} {problem}: its header promises {expected} bytes of shape "
            f"{'×'.join(map(str, dims))}, but {found} follow; download it again."
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def idx_names(split: str) -> tuple[str, str]:
    """The (images, labels) IDX base names of ``split`` (``train-…`` or ``t10k-…``)."""
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def idx_folders(name: str, root: Path) -> list[Path]:
    """The folders under ``root`` that may hold ``name``'s IDX files, in the order tried."""
    cls = TORCHVISION_CLASSES[name]
    folders = [root, root / name, root / cls / "raw", root / name / cls / "raw"]
    if name == "fashionmnist":
        folders.insert(2, root / "fashion-mnist")
    return folders


def _find_idx_file(folder: Path, base: str) -> Path | None:
    dotted = base.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for candidate in (base, f"{base}.gz", dotted, f"{dotted}.gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def find_idx_pair(name: str, root: Path, split: str) -> tuple[Path, Path] | None:
    """(images file, labels file) in the first candidate folder under ``root`` holding both."""
    image_base, label_base = idx_names(split)
    for folder in idx_folders(name, root):
        image_file = _find_idx_file(folder, image_base)
        label_file = _find_idx_file(folder, label_base)
        if image_file is not None and label_file is not None:
            return image_file, label_file
    return None


def load_idx(name: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(uint8 images (N, 1, H, W), int64 labels) from the first folder holding the IDX pair."""
    found = find_idx_pair(name, root, split)
    if found is not None:
        image_file, label_file = found
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1:
            raise DdppError(
                f"{image_file} / {label_file}: expected images (N, H, W) and labels (N,), got "
                f"shapes {tuple(images.shape)} and {tuple(labels.shape)}."
            )
        if images.shape[0] != labels.shape[0]:
            raise DdppError(
                f"{image_file} has {images.shape[0]} images but {label_file} has "
                f"{labels.shape[0]} labels; the files do not belong together."
            )
        if labels.numel() and int(labels.max()) >= 10:
            raise DdppError(f"{label_file} has labels above 9; it is not an MNIST-style file.")
        return images.unsqueeze(1), labels.to(torch.int64)
    return None
