"""Picture files: the image format a file name asks for, and atomic writes with clear errors."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ddpp_cli.engine import store
from ddpp_cli.engine.errors import DdppError

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".gif": "GIF"}


def image_format(path: Path) -> str:
    """Pillow's format name for ``path``'s extension; DdppError for a name that is no image."""
    path = Path(path)
    kind = IMAGE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DdppError(
            f"cannot tell the image format of {path}; end the name with one of "
            f"{', '.join(sorted(IMAGE_FORMATS))}."
        )
    if path.is_dir():
        raise DdppError(f"cannot write {path}: it is a folder; give a file name.")
    return kind


def save_image(
    image: Image.Image,
    path: Path,
    frames: Sequence[Image.Image] = (),
    frame_ms: int = 100,
) -> Path:
    """Write ``image`` (plus animation ``frames`` for a GIF, ``frame_ms`` each) atomically;
    DdppError if impossible."""
    path = Path(path)
    kind = image_format(path)
    buffer = io.BytesIO()
    options: dict[str, Any] = {"optimize": True} if kind in ("PNG", "JPEG") else {}
    if frames:
        options.update(save_all=True, append_images=list(frames), loop=0, duration=frame_ms)
    image.save(buffer, format=kind, **options)
    write_bytes(path, buffer.getvalue())
    return path


def write_bytes(path: Path, payload: bytes) -> None:
    """``store.atomic_write_bytes`` with a DdppError for paths that cannot be written."""
    if path.is_dir():
        raise DdppError(f"cannot write {path}: it is a folder; give a file name.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DdppError(f"cannot write {path}: {parent} is a file, not a folder.")
            break
    try:
        store.atomic_write_bytes(path, payload)  # ordinary permissions, not mkstemp's 0600
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise DdppError(f"cannot write {path}: {reason}; choose another path.") from None
