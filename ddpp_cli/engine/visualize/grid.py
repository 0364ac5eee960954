"""Class grids of a distilled set: one block of rows per class, class names on the left.

Grids are built with ``torchvision.utils.make_grid`` and labelled with pillow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.visualize.drawing import BACKGROUND, INK, font, text_size
from ddpp_cli.engine.visualize.labels import caption_text
from ddpp_cli.engine.visualize.pixels import shown_pixels, to_pil

PADDING = 2  # pixels between grid cells (make_grid's default)


def parse_classes(spec: str | None, class_names: Sequence[str]) -> tuple[int, ...] | None:
    """``"0,3,7"`` (indices, or exact class names) to class indices; None for all classes."""
    if spec is None or not spec.strip():
        return None
    lookup = {name.lower(): index for index, name in enumerate(class_names)}
    chosen: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if re.fullmatch(r"-?\d+", part):
            index = int(part)
        elif part.lower() in lookup:
            index = lookup[part.lower()]
        else:
            raise DdppError(
                f"unknown class {part!r} in --classes; give indices 0…{len(class_names) - 1} "
                "or class names, separated by commas."
            )
        if not 0 <= index < len(class_names):
            raise DdppError(
                f"class {index} is out of range: this set has {len(class_names)} classes "
                f"(0…{len(class_names) - 1})."
            )
        if index not in chosen:
            chosen.append(index)
    if not chosen:
        raise DdppError("--classes names no class; give indices such as 0,3,7.")
    return tuple(chosen)


def _members(distilled: DistilledSet, classes: Iterable[int]) -> list[list[int]]:
    labels = distilled.labels.tolist()
    return [[i for i, label in enumerate(labels) if label == c] for c in classes]


def _label(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


@dataclass(frozen=True)
class GridLayout:
    """Where each image of a class grid lies: one block of rows per class, labels on the left.

    Each block is one ``make_grid`` of a class's images; blocks share their edge padding, so a
    grid whose classes fit on one row each looks like a single ``make_grid``. When classes wrap
    onto several rows, ``gap`` extra pixels separate the blocks.
    """

    classes: tuple[int, ...]  # class index of each block, top to bottom
    counts: tuple[int, ...]  # images of each class
    block_rows: tuple[int, ...]  # rows of each block
    block_tops: tuple[int, ...]  # y of the top edge (padding included) of each block
    columns: int
    cell: tuple[int, int]  # (height, width) of one image after upsampling
    padding: int
    gap: int
    margin: int  # width of the label column on the left
    labels: tuple[str, ...]  # text drawn for each class
    font_size: int

    def block_height(self, block: int) -> int:
        """Height of one block's ``make_grid`` output."""
        return self.block_rows[block] * (self.cell[0] + self.padding) + self.padding

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole picture."""
        width = self.margin + self.columns * (self.cell[1] + self.padding) + self.padding
        last = len(self.classes) - 1
        return width, self.block_tops[last] + self.block_height(last) if self.classes else 0

    def box(self, c: int, i: int) -> tuple[int, int, int, int]:
        """Pixel box (left, top, right, bottom; right, bottom exclusive) of image ``i`` of class c.

        ``i`` counts the images of class ``c`` in the order they appear in the set.
        """
        if c not in self.classes:
            raise DdppError(f"class {c} is not in this grid (classes {list(self.classes)}).")
        block = self.classes.index(c)
        if not 0 <= i < self.counts[block]:
            raise DdppError(f"class {c} has {self.counts[block]} images; there is no image {i}.")
        height, width = self.cell
        left = self.margin + self.padding + (i % self.columns) * (width + self.padding)
        top = self.block_tops[block] + self.padding + (i // self.columns) * (height + self.padding)
        return left, top, left + width, top + height


def grid_layout(
    distilled: DistilledSet,
    *,
    classes: Sequence[int] | None = None,
    max_per_row: int = 10,
    upsample: int = 1,
) -> GridLayout:
    """The layout :func:`class_grid` draws with the same arguments."""
    if max_per_row < 1:
        raise DdppError(f"--max-per-row must be at least 1, got {max_per_row}.")
    if upsample < 1:
        raise DdppError(f"--upsample must be at least 1, got {upsample}.")
    num_classes = distilled.num_classes
    chosen = tuple(range(num_classes)) if classes is None else tuple(int(c) for c in classes)
    if not chosen:
        raise DdppError("no classes to draw.")
    for c in chosen:
        if not 0 <= c < num_classes:
            raise DdppError(
                f"class {c} is out of range: this set has {num_classes} classes "
                f"(0…{num_classes - 1})."
            )
    counts = tuple(len(m) for m in _members(distilled, chosen))
    columns = max(1, min(max_per_row, max(counts)))
    block_rows = tuple(max(1, math.ceil(count / columns)) for count in counts)
    height = int(distilled.images.shape[2]) * upsample
    width = int(distilled.images.shape[3]) * upsample
    gap = max(4 * PADDING, height // 5) if max(block_rows) > 1 else 0
    block_tops, top = [], 0
    for rows in block_rows:
        block_tops.append(top)
        top += rows * (height + PADDING) + gap  # the next block starts on this one's last padding
    font_size = int(min(22, max(11, round(0.3 * height))))
    labels = tuple(_label(distilled.class_names[c]) for c in chosen)
    face = font(font_size)
    text_width = max(text_size(text, face)[0] for text in labels)
    margin = text_width + 2 * max(4, font_size // 2) if text_width else 0
    return GridLayout(
        classes=chosen,
        counts=counts,
        block_rows=block_rows,
        block_tops=tuple(block_tops),
        columns=columns,
        cell=(height, width),
        padding=PADDING,
        gap=gap,
        margin=margin,
        labels=labels,
        font_size=font_size,
    )


def image_box(
    distilled: DistilledSet,
    c: int,
    i: int,
    *,
    classes: Sequence[int] | None = None,
    max_per_row: int = 10,
    upsample: int = 1,
) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of image ``i`` of class ``c`` in :func:`class_grid`."""
    layout = grid_layout(distilled, classes=classes, max_per_row=max_per_row, upsample=upsample)
    return layout.box(c, i)


def class_grid(
    distilled: DistilledSet,
    *,
    classes: Sequence[int] | None = None,
    max_per_row: int = 10,
    clip: bool = False,
    upsample: int = 1,
    zca_path: Path | None = None,
    labels: str | None = None,
) -> Image.Image:
    """One row per class (wrapping at ``max_per_row``), class names on the left, pixels restored.

    ``clip`` shows MTT's clipped view (:func:`clipped_view`); ``upsample`` enlarges each image by
    an integer factor with nearest-neighbour sampling. Grayscale sets give an L-mode image. A set
    with label vectors, or made with ``--selection best-test``, gets a caption below the grid
    that says so (:func:`~.labels.caption_text`; the cells keep their places). ``labels`` names
    the labels of a set that does not carry them (an animation frame of a learned-label run).
    """
    layout = grid_layout(distilled, classes=classes, max_per_row=max_per_row, upsample=upsample)
    pixels = shown_pixels(distilled, clip, zca_path)
    channels = int(pixels.shape[1])
    if channels not in (1, 3):
        raise DdppError(f"cannot draw images with {channels} channels (only 1 or 3).")
    if upsample > 1:
        pixels = F.interpolate(pixels, scale_factor=upsample, mode="nearest")
    from torchvision.utils import make_grid  # here: torchvision takes a second to import

    mode = "L" if channels == 1 else "RGB"
    canvas = Image.new(mode, layout.size, BACKGROUND[0] if mode == "L" else BACKGROUND)
    height, width = layout.cell
    for block, members in enumerate(_members(distilled, layout.classes)):
        cells = torch.ones(layout.block_rows[block] * layout.columns, channels, height, width)
        cells[: len(members)] = pixels[members]
        grid = make_grid(cells, nrow=layout.columns, padding=layout.padding, pad_value=1.0)
        canvas.paste(
            to_pil(grid[:1] if channels == 1 else grid), (layout.margin, layout.block_tops[block])
        )
    if layout.margin:
        draw = ImageDraw.Draw(canvas)
        face = font(layout.font_size)
        ink = INK[0] if mode == "L" else INK
        pad = max(4, layout.font_size // 2)
        for block, text in enumerate(layout.labels):
            middle = layout.block_tops[block] + layout.block_height(block) / 2
            draw.text((layout.margin - pad, middle), text, fill=ink, font=face, anchor="rm")
    caption = caption_text(distilled, labels)
    return canvas if caption is None else with_caption(canvas, caption, layout.font_size)


def with_caption(canvas: Image.Image, text: str, size: int) -> Image.Image:
    """``canvas`` over a band holding ``text`` (widened when the text is wider than it)."""
    face = font(size)
    width, height = text_size(text, face)
    pad = max(4, size // 2)
    background = BACKGROUND[0] if canvas.mode == "L" else BACKGROUND
    framed = Image.new(
        canvas.mode,
        (max(canvas.width, width + 2 * pad), canvas.height + height + 2 * pad),
        background,
    )
    framed.paste(canvas, (0, 0))
    ink = INK[0] if canvas.mode == "L" else INK
    draw = ImageDraw.Draw(framed)
    draw.text((pad, canvas.height + pad), text, fill=ink, font=face, anchor="lt")
    return framed
