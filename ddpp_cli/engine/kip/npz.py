"""KIP's published sets (gs://kip-datasets): a ``.npz`` read without pickle into tensors.

KIP's code saves its support set with ``numpy.savez`` under the keys ``images`` (N×H×W×C
float32, already preprocessed: KIP's ZCA where the file name says ``zca``, else the per-channel
standardisation) and ``labels`` (N×K float32, the label vectors, learned or the centred
one-hot). A ``.npz`` is a zip of ``.npy`` files; this reader parses the ``.npy`` header itself
and accepts little-endian float and int arrays in C order only (never a pickled object).
"""

from __future__ import annotations

import ast
import struct
import zipfile
from pathlib import Path

import torch

from ddpp_cli.engine.errors import DdppError

KEYS = ("images", "labels")
_DTYPES = {
    "<f4": torch.float32, "<f8": torch.float64, "<f2": torch.float16,
    "<i4": torch.int32, "<i8": torch.int64, "|u1": torch.uint8,
}  # fmt: skip
_MAGIC = b"\x93NUMPY"


def read_npy(raw: bytes, where: str) -> torch.Tensor:
    """One ``.npy`` (format 1.x, 2.x or 3.x) as a tensor; DdppError for anything else."""
    if not raw.startswith(_MAGIC) or len(raw) < 10:
        raise DdppError(f"{where} is not a .npy array.")
    major = raw[6]
    size_format, start = ("<H", 10) if major == 1 else ("<I", 12)
    (header_len,) = struct.unpack(size_format, raw[8:start])
    try:
        header = ast.literal_eval(raw[start : start + header_len].decode("latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError):
        raise DdppError(f"{where}: its .npy header cannot be read.") from None
    if descr not in _DTYPES or fortran:
        raise DdppError(
            f"{where}: arrays of dtype {descr!r}{' in Fortran order' if fortran else ''} are not "
            f"read (little-endian {', '.join(_DTYPES)} in C order only)."
        )
    dtype = _DTYPES[descr]
    data = bytearray(raw[start + header_len :])
    count = 1
    for n in shape:
        count *= int(n)
    if len(data) != count * torch.empty((), dtype=dtype).element_size():
        raise DdppError(f"{where}: holds {len(data)} bytes, not the {shape} {descr} it declares.")
    return (
        torch.frombuffer(data, dtype=dtype).reshape(shape).clone()
        if count
        else torch.empty(shape, dtype=dtype)
    )


def read_set(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N×C×H×W float32, label vectors N×K float32) of KIP's ``.npz`` at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DdppError(f"{path} does not exist; pass the path of KIP's .npz file.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [key for key in KEYS if f"{key}.npy" not in names]
            if missing:
                found = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "nothing"
                raise DdppError(
                    f"{path} has no {' or '.join(missing)} array (it holds {found}); KIP's sets "
                    "hold 'images' (N×H×W×C) and 'labels' (N×K)."
                )
            arrays = {key: read_npy(archive.read(f"{key}.npy"), f"{path}:{key}") for key in KEYS}
    except zipfile.BadZipFile:
        raise DdppError(f"{path} is not a .npz archive (numpy.savez's zip).") from None
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 4:
        raise DdppError(f"{path}: images must be N×H×W×C, got shape {tuple(images.shape)}.")
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise DdppError(
            f"{path}: labels must be N×K label vectors for its {images.shape[0]} images, got "
            f"shape {tuple(labels.shape)}."
        )
    if not labels.is_floating_point() or not bool(torch.isfinite(labels).all()):
        raise DdppError(f"{path}: the label vectors must be finite floating-point numbers.")
    return images.permute(0, 3, 1, 2).float().contiguous(), labels.float()
