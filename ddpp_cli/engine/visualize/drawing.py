"""Drawing materials shared by the pictures: the default font at a size, text extents, colours."""

from __future__ import annotations

import math
from functools import lru_cache

from PIL import ImageFont

BACKGROUND = (255, 255, 255)
INK = (33, 33, 33)


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (its bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def text_size(text: str, face) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` drawn with ``face``."""
    left, top, right, bottom = face.getbbox(text)
    return math.ceil(right - left), math.ceil(bottom - top)
