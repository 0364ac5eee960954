"""Vector drawings: a picture as a list of shapes, rendered as a pillow image or an SVG document.

A chart is laid out once as a :class:`Scene` (pixel coordinates, y down) and written as PNG (or
another pillow format) or SVG by the file's extension, so both files show the same picture.
Shapes carry a ``role`` (the SVG ``class``) and a ``key`` (``data-key``), so an SVG can be
read back by what each shape stands for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from PIL import Image, ImageDraw

from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.visualize.drawing import BACKGROUND, INK, font, text_size
from ddpp_cli.engine.visualize.files import IMAGE_FORMATS, save_image, write_bytes

Color = tuple[int, int, int]
Point = tuple[float, float]
SVG_SUFFIX = ".svg"
_FONT_FAMILY = "DejaVu Sans, Helvetica, Arial, sans-serif"
# The vertical half of a text anchor ("lt": left, top) in SVG terms.
_SVG_BASELINE = {"t": "hanging", "m": "central", "b": "text-after-edge"}
_SVG_ALIGN = {"l": "start", "m": "middle", "r": "end"}


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle; ``fill`` or ``outline`` may be None (not drawn)."""

    left: float
    top: float
    right: float
    bottom: float
    fill: Color | None
    outline: Color | None = None
    width: int = 1
    role: str = ""
    key: str = ""


@dataclass(frozen=True)
class Line:
    """A polyline through ``points``."""

    points: tuple[Point, ...]
    color: Color
    width: int = 1
    role: str = ""
    key: str = ""


@dataclass(frozen=True)
class Polygon:
    """A closed polygon (a marker)."""

    points: tuple[Point, ...]
    fill: Color | None
    outline: Color | None = None
    width: int = 1
    role: str = ""
    key: str = ""


@dataclass(frozen=True)
class Text:
    """One line of text at (x, y); ``anchor`` as pillow's ("lt", "mm", "rb": horizontal l/m/r,
    vertical t/m/b); ``vertical`` turns it 90° counter-clockwise around (x, y), centred."""

    x: float
    y: float
    text: str
    size: int
    anchor: str = "lt"
    color: Color = INK
    vertical: bool = False
    role: str = ""
    key: str = ""


Shape = Rect | Line | Polygon | Text


@dataclass(frozen=True)
class Scene:
    """A picture: its size in pixels, its shapes in drawing order and a title (SVG ``<title>``)."""

    width: int
    height: int
    shapes: tuple[Shape, ...]
    title: str = ""


def to_image(scene: Scene) -> Image.Image:
    """The scene drawn with pillow on a white RGB canvas."""
    canvas = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for shape in scene.shapes:
        if isinstance(shape, Rect):
            box = [shape.left, shape.top, shape.right, shape.bottom]
            draw.rectangle(box, fill=shape.fill, outline=shape.outline, width=shape.width)
        elif isinstance(shape, Line):
            draw.line(list(shape.points), fill=shape.color, width=shape.width)
        elif isinstance(shape, Polygon):
            draw.polygon(list(shape.points), fill=shape.fill, outline=shape.outline,
                         width=shape.width)  # fmt: skip
        elif shape.vertical:
            _paste_vertical(canvas, shape)
        else:
            draw.text((shape.x, shape.y), shape.text, fill=shape.color, font=font(shape.size),
                      anchor=shape.anchor)  # fmt: skip
    return canvas


def _paste_vertical(canvas: Image.Image, text: Text) -> None:
    width, height = text_size(text.text, font(text.size))
    label = Image.new("RGBA", (width + 4, height + 8), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2, 2), text.text, fill=text.color, font=font(text.size),
                               anchor="lt")  # fmt: skip
    label = label.rotate(90, expand=True)
    canvas.paste(label, (round(text.x - label.width / 2), round(text.y - label.height / 2)), label)


def _rgb(color: Color | None) -> str:
    return "none" if color is None else f"rgb({color[0]},{color[1]},{color[2]})"


def _points(points: tuple[Point, ...]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _tags(shape: Shape) -> str:
    role = f" class={quoteattr(shape.role)}" if shape.role else ""
    return role + (f" data-key={quoteattr(shape.key)}" if shape.key else "")


def _svg_element(shape: Shape) -> str:
    tags = _tags(shape)
    if isinstance(shape, Rect):
        return (
            f'<rect{tags} x="{shape.left:.1f}" y="{shape.top:.1f}" '
            f'width="{shape.right - shape.left:.1f}" height="{shape.bottom - shape.top:.1f}" '
            f'fill="{_rgb(shape.fill)}" stroke="{_rgb(shape.outline)}" '
            f'stroke-width="{shape.width}"/>'
        )
    if isinstance(shape, Line):
        return (
            f'<polyline{tags} points="{_points(shape.points)}" fill="none" '
            f'stroke="{_rgb(shape.color)}" stroke-width="{shape.width}"/>'
        )
    if isinstance(shape, Polygon):
        return (
            f'<polygon{tags} points="{_points(shape.points)}" fill="{_rgb(shape.fill)}" '
            f'stroke="{_rgb(shape.outline)}" stroke-width="{shape.width}"/>'
        )
    align, baseline = ("middle", "central") if shape.vertical else (
        _SVG_ALIGN[shape.anchor[0]], _SVG_BASELINE[shape.anchor[1]]
    )  # fmt: skip
    turn = f' transform="rotate(-90 {shape.x:.1f} {shape.y:.1f})"' if shape.vertical else ""
    return (
        f'<text{tags} x="{shape.x:.1f}" y="{shape.y:.1f}" font-size="{shape.size}" '
        f'text-anchor="{align}" dominant-baseline="{baseline}" fill="{_rgb(shape.color)}"'
        f"{turn}>{escape(shape.text)}</text>"
    )


def to_svg(scene: Scene) -> str:
    """The scene as a standalone SVG document (UTF-8 text)."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{scene.width}" '
        f'height="{scene.height}" viewBox="0 0 {scene.width} {scene.height}" '
        f"font-family={quoteattr(_FONT_FAMILY)}>",
        f"<title>{escape(scene.title)}</title>",
        f'<rect width="100%" height="100%" fill="{_rgb(BACKGROUND)}"/>',
        *(_svg_element(shape) for shape in scene.shapes),
        "</svg>",
    ]
    return "\n".join(lines) + "\n"


def check_scene_path(path: Path) -> None:
    """DdppError unless ``path`` names a file to write as SVG or as a picture pillow writes."""
    path = Path(path)
    if path.suffix.lower() not in {SVG_SUFFIX, *IMAGE_FORMATS}:
        raise DdppError(
            f"cannot tell the picture format of {path}; end the name with .png or .svg "
            f"(or {', '.join(sorted(set(IMAGE_FORMATS) - {'.png'}))})."
        )
    if path.is_dir():
        raise DdppError(f"cannot write {path}: it is a folder; give a file name.")


def save_scene(scene: Scene, path: Path) -> Path:
    """Write ``scene`` atomically: SVG for a ``.svg`` name, else a pillow picture by extension."""
    path = Path(path)
    check_scene_path(path)
    if path.suffix.lower() == SVG_SUFFIX:
        write_bytes(path, to_svg(scene).encode("utf-8"))
        return path
    return save_image(to_image(scene), path)
