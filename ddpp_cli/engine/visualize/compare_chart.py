"""The chart of a comparison: ``compare.json`` of ``ddpp run --compare`` drawn as a picture.

One bar per row in the table's order (mean test accuracy, a whisker of ± its std), the
published figure as a diamond beside it (hollow when no source confirmed it), the rows' scores
(HLR, IOR, LRS, ARS) as a second panel when any row has them, and the conventions (protocol,
selection, labels) in the caption. Laid out once as a :class:`Scene`; PNG or SVG by extension.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpp_cli.engine import store
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import DEFAULT_LR
from ddpp_cli.engine.layout import COMPARE_CHART_NAME, COMPARE_CHART_SVG_NAME, COMPARE_JSON_NAME
from ddpp_cli.engine.visualize.curves import BLUE, GREEN, ORANGE, RED, nice_ticks, tick_labels
from ddpp_cli.engine.visualize.drawing import INK, font, text_size
from ddpp_cli.engine.visualize.scene import Line, Polygon, Rect, Scene, Shape, Text, save_scene

COMPARE_FORMAT = "ddpp.compare/1"  # engine/compare/table.py's FORMAT (a test keeps them equal)
CHART_NAMES = (COMPARE_CHART_NAME, COMPARE_CHART_SVG_NAME)  # the default first
SCORE_NAMES = {"hlr": "HLR", "ior": "IOR", "lrs": "LRS", "ars": "ARS"}
SCORE_COLORS = {"hlr": BLUE, "ior": ORANGE, "lrs": GREEN, "ars": (148, 103, 189)}
BAR_COLOR, PUBLISHED_COLOR, MUTED = (31, 119, 180), RED, (110, 110, 110)
_GRID, _AXIS = (228, 228, 228), (90, 90, 90)
_REMEDY = "give the compare.json that 'ddpp run --compare' wrote"
_ROW_KEYS: dict[str, store.Check] = {
    "row": store.TEXT,
    "method": store.TEXT,
    "mean": store.NUMBER,
    "std": store.NUMBER,
    "reference": store.optional(store.OBJECT),
    "scores": store.optional(store.OBJECT),
    "evaluation": store.OBJECT,
}


@dataclass(frozen=True)
class Published:
    """A row's published figure (%): its mean, its std where a source prints one, confirmed."""

    accuracy: float
    std: float | None
    confirmed: bool


@dataclass(frozen=True)
class ChartRow:
    """What the chart shows of one row of ``compare.json`` (accuracies in %)."""

    row: str  # the row's name in compare.json ("random", "ddpp"): the SVG's data-key
    label: str
    mean: float
    std: float
    published: Published | None = None
    scores: tuple[tuple[str, float], ...] = ()  # (key of SCORE_NAMES, value), in that order
    selection: str | None = None
    labels: str | None = None  # the labels that trained the evaluation networks
    test_size: int | None = None
    preprocessing: str | None = None


@dataclass(frozen=True)
class Comparison:
    """A comparison as read from ``compare.json``: its title, rows and protocol."""

    title: str
    rows: tuple[ChartRow, ...]
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def has_scores(self) -> bool:
        return any(row.scores for row in self.rows)


def comparison_file(target: Path) -> Path | None:
    """``compare.json`` of a ``ddpp run --compare`` folder, or ``target`` when it is such a
    file; None when ``target`` is neither (a set or a distill run)."""
    target = Path(target)
    if target.is_dir():
        path = target / COMPARE_JSON_NAME
        return path if path.is_file() else None
    return target if target.suffix.lower() == ".json" and target.is_file() else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def _chart_row(path: Path, index: int, row: dict[str, Any]) -> ChartRow:
    if not isinstance(row, dict):
        raise store.unusable(path, "comparison", f"rows[{index}]", "must be an object", _REMEDY)
    store.check_keys(path, row, _ROW_KEYS, what="comparison", remedy=_REMEDY,
                     required=("method", "mean", "std"), prefix=f"rows[{index}].")  # fmt: skip
    reference, published = row.get("reference"), None
    if reference and _number(reference.get("accuracy")) is not None:
        published = Published(
            _number(reference["accuracy"]), _number(reference.get("std")),
            reference.get("confirmed") is not False,
        )  # fmt: skip
    scores = row.get("scores") or {}
    evaluation = row.get("evaluation") or {}
    protocol = evaluation.get("protocol") if isinstance(evaluation.get("protocol"), dict) else {}
    return ChartRow(
        row=row.get("row") or row["method"], label=row["method"], mean=float(row["mean"]),
        std=float(row["std"]), published=published,
        scores=tuple((key, _number(scores[key])) for key in SCORE_NAMES
                     if _number(scores.get(key)) is not None),
        selection=evaluation.get("selection"),
        labels=protocol.get("label_text") or protocol.get("loss"),
        test_size=protocol.get("test_size"), preprocessing=protocol.get("preprocessing"),
    )  # fmt: skip


def read_comparison(path: Path) -> Comparison:
    """The comparison in ``path`` (a ``compare.json``); DdppError naming what is wrong."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DdppError(f"cannot read {path} ({exc}); {_REMEDY}.") from None
    if not isinstance(content, dict) or content.get("format") != COMPARE_FORMAT:
        raise DdppError(f"{path} is not a ddpp comparison (format {COMPARE_FORMAT}); {_REMEDY}.")
    rows = content.get("rows")
    if not isinstance(rows, list) or not rows:
        raise store.unusable(path, "comparison", "rows", "must be a non-empty list", _REMEDY)
    title = (
        f"ddpp run --compare: {content.get('dataset', '?')}, IPC {content.get('ipc', '?')}, "
        f"profile {content.get('profile', '?')}"
    )
    protocol = content.get("protocol") if isinstance(content.get("protocol"), dict) else {}
    return Comparison(
        title, tuple(_chart_row(path, k, row) for k, row in enumerate(rows)), protocol
    )


def per_row_text(rows: Sequence[ChartRow], value: Callable[[ChartRow], str | None]) -> str:
    """One value for every row ("x, for every row"), or each value with its rows ("x for A,
    B; y for C"), in the rows' order; rows without one are "not recorded"."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(value(row) or "not recorded", []).append(row.label)
    if len(groups) == 1:
        return f"{next(iter(groups))}, for every row"
    return "; ".join(f"{text} for {', '.join(labels)}" for text, labels in groups.items())


def protocol_text(comparison: Comparison) -> str:
    """The evaluation protocol of every row, as ``compare.json`` records it."""
    p, rows = comparison.protocol, comparison.rows
    sizes = {row.test_size for row in rows if row.test_size is not None}
    test = sizes.pop() if len(sizes) == 1 else p.get("test_subset") or "all"
    kinds = sorted({row.preprocessing for row in rows if row.preprocessing})
    lr = p.get("lr")
    prepared = f" ({', '.join(kinds)})" if kinds else ""
    parts = [
        f"{p.get('arch', '?')}, {p.get('runs', '?')} runs of {p.get('epochs', '?')} epochs "
        f"from seed {p.get('seed', '?')}",
        f"SGD momentum {p.get('momentum', '?')}, weight decay {p.get('weight_decay', '?')}, "
        f"batch {p.get('batch_size', '?')}",
        f"lr the set's learned one (else {DEFAULT_LR:g})" if lr is None else f"lr {lr:g}",
        f"DSA {'off' if p.get('dsa_strategy') == 'none' else 'on'}",
        f"the same {test} test images{prepared} for every row",
    ]
    return ", ".join(parts)


def caption_lines(comparison: Comparison) -> list[str]:
    """The caption: protocol, what bars and whiskers are, selection, labels, published figures
    and scores (when shown)."""
    rows = comparison.rows
    lines = [
        f"Protocol: {protocol_text(comparison)}.",
        "Bars: mean test accuracy of each row's runs; whiskers: ± their population std.",
        f"Selection: {per_row_text(rows, lambda row: row.selection)}.",
        f"Labels: {per_row_text(rows, lambda row: row.labels)}.",
    ]
    if any(row.published for row in rows):
        unconfirmed = any(row.published and not row.published.confirmed for row in rows)
        lines.append(
            "Published (diamonds, ± where a source prints a std): ConvNet-3 figures from other "
            "protocols, a guide, not a target"
            + ("; hollow: not confirmed, recalled from the papers." if unconfirmed else ".")
        )  # fmt: skip
    if comparison.has_scores:
        lines.append(
            "Scores (DD-Ranking): HLR hard-label recovery, IOR improvement over random, LRS "
            "label-robust score, ARS augmentation-robust score, as compare.json gives them."
        )
    return lines


def wrap(text: str, width: float, size: int) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` pixels wide (a longer word stays
    whole)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and text_size(candidate, font(size))[0] <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


@dataclass(frozen=True)
class Axis:
    """A panel's vertical scale: maps a value to a pixel row (``top`` is ``high``)."""

    top: float
    bottom: float
    low: float
    high: float

    def y(self, value: float) -> float:
        return self.bottom - (value - self.low) / (self.high - self.low) * (self.bottom - self.top)


def axis_range(values: Sequence[float]) -> tuple[float, float, list[float]]:
    """(low, high, ticks) of a bar panel: from 0 (or below, for negative values) to round
    ticks that enclose every value."""
    low, high = min(0.0, *values), max(0.0, *values)
    if high - low < 1e-12:
        high = low + 1.0
    ticks = nice_ticks(low, high)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    low, high = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    count = round((high - low) / step)
    return low, high, [low + k * step for k in range(count + 1)]


def _diamond(x: float, y: float, r: float, published: Published, **tags: str) -> Polygon:
    return Polygon(
        ((x, y - r), (x + r, y), (x, y + r), (x - r, y)),
        fill=PUBLISHED_COLOR if published.confirmed else (255, 255, 255),
        outline=PUBLISHED_COLOR, width=2, **tags,
    )  # fmt: skip


def _whisker(x: float, y1: float, y2: float, cap: float, color, **tags: str) -> Line:
    return Line(
        ((x - cap, y1), (x + cap, y1), (x, y1), (x, y2), (x - cap, y2), (x + cap, y2)),
        color, width=2, **tags,
    )  # fmt: skip


def _axis_shapes(axis: Axis, left: float, right: float, ticks: list[float], ylabel: str):
    shapes: list[Shape] = []
    for value, text in zip(ticks, tick_labels(ticks), strict=True):
        y = axis.y(value)
        shapes.append(Line(((left, y), (right, y)), _GRID if value else _AXIS, role="grid"))
        shapes.append(Text(left - 6, y, text, 12, "rm", role="tick"))
    shapes.append(Rect(left, axis.top, right, axis.bottom, None, _AXIS, role="frame"))
    shapes.append(Text(22, (axis.top + axis.bottom) / 2, ylabel, 14, vertical=True,
                       role="ylabel"))  # fmt: skip
    return shapes


def _accuracy_panel(rows, left, slot, top, bottom, right) -> list[Shape]:
    """Bars, whiskers and published diamonds (with their std) of every row."""
    tops = [row.mean + row.std for row in rows] + [
        row.published.accuracy + (row.published.std or 0) for row in rows if row.published
    ]
    low, high, ticks = axis_range(tops)
    axis = Axis(top, bottom, low, high)
    shapes = _axis_shapes(axis, left, right, ticks, "test accuracy (%)")
    with_published = any(row.published for row in rows)
    unit = min(slot, 180.0)  # bars and diamonds keep their size in wide slots
    for k, row in enumerate(rows):
        centre = left + (k + 0.5) * slot
        bar_x = centre - 0.12 * unit if with_published else centre
        half = (0.22 if with_published else 0.25) * unit
        shapes.append(Rect(bar_x - half, axis.y(row.mean), bar_x + half, axis.y(0), BAR_COLOR,
                           role="bar", key=row.row))  # fmt: skip
        shapes.append(_whisker(bar_x, axis.y(row.mean + row.std), axis.y(row.mean - row.std),
                               0.25 * half, INK, role="whisker", key=row.row))  # fmt: skip
        if row.published is not None:
            x, y, pub = centre + 0.26 * unit, axis.y(row.published.accuracy), row.published
            if pub.std is not None:
                shapes.append(_whisker(x, axis.y(pub.accuracy + pub.std),
                                       axis.y(pub.accuracy - pub.std), 4, PUBLISHED_COLOR,
                                       role="published-whisker", key=row.row))  # fmt: skip
            status = "confirmed" if pub.confirmed else "unconfirmed"
            radius = min(8.0, 0.09 * unit)
            shapes.append(_diamond(x, y, radius, pub, role=f"published {status}", key=row.row))
    return shapes


def _row_texts(rows, left, slot, top) -> tuple[list[Shape], float]:
    """Under each slot: the row's label (wrapped), its mean ± std and its published figure."""
    shapes: list[Shape] = []
    bottom = top
    for k, row in enumerate(rows):
        centre, y = left + (k + 0.5) * slot, top
        for line in wrap(row.label, slot - 6, 13):
            shapes.append(Text(centre, y, line, 13, "mt", role="row-label", key=row.row))
            y += 16
        value = f"{row.mean:.2f} ± {row.std:.2f}"
        shapes.append(Text(centre, y + 2, value, 12, "mt", BAR_COLOR, role="row-value"))
        if row.published is not None:
            pub = row.published
            std = "" if pub.std is None else f" ± {pub.std:.1f}"
            shapes.append(Text(centre, y + 18, f"pub. {pub.accuracy:.1f}{std}", 12, "mt",
                               PUBLISHED_COLOR, role="row-published"))  # fmt: skip
        bottom = max(bottom, y + 34)
    return shapes, bottom


def _scores_panel(rows, left, slot, top, bottom, right) -> list[Shape]:
    """Per row, one thin bar per score it has, on a shared axis with its zero line."""
    values = [value for row in rows for _, value in row.scores]
    low, high, ticks = axis_range(values)
    axis = Axis(top, bottom, low, high)
    shapes = _axis_shapes(axis, left, right, ticks, "score")
    width = 0.8 * min(slot, 180.0) / len(SCORE_NAMES)
    for k, row in enumerate(rows):
        centre = left + (k + 0.5) * slot
        if not row.scores:
            shapes.append(Text(centre, (top + bottom) / 2, "no scores", 12, "mm", MUTED))
        for key, value in row.scores:
            x = centre + (list(SCORE_NAMES).index(key) - len(SCORE_NAMES) / 2) * width
            y1, y2 = sorted((axis.y(value), axis.y(0)))
            shapes.append(Rect(x, y1, x + width, y2, SCORE_COLORS[key], role=f"score score-{key}",
                               key=row.row))  # fmt: skip
    x = right - 8
    for key in reversed(SCORE_NAMES):
        shapes.append(Text(x, top - 6, SCORE_NAMES[key], 12, "rb", role="legend"))
        x -= text_size(SCORE_NAMES[key], font(12))[0] + 4
        shapes.append(Rect(x - 12, top - 17, x, top - 7, SCORE_COLORS[key], role="legend"))
        x -= 22
    return shapes


def _legend(rows, left: float, y: float) -> list[Shape]:
    """Bar and diamond keys under the title."""
    shapes: list[Shape] = [
        Rect(left, y - 6, left + 16, y + 6, BAR_COLOR, role="legend"),
        Text(left + 22, y, "mean ± std of the runs (%)", 13, "lm", role="legend"),
    ]
    x = left + 40 + text_size("mean ± std of the runs (%)", font(13))[0]
    kinds = [
        (Published(0, None, confirmed), text)
        for confirmed, text in ((True, "published (%)"), (False, "published, not confirmed"))
        if any(row.published and row.published.confirmed is confirmed for row in rows)
    ]
    for published, text in kinds:
        shapes += [_diamond(x + 7, y, 7, published, role="legend"),
                   Text(x + 20, y, text, 13, "lm", role="legend")]  # fmt: skip
        x += 40 + text_size(text, font(13))[0]
    return shapes


def chart_scene(comparison: Comparison, *, width: int | None = None) -> Scene:
    """The picture of ``comparison``: title, legend, the accuracy panel, the row texts, the
    scores panel when any row has scores, and the caption."""
    rows = comparison.rows
    width = width or max(960, 90 + 120 * len(rows))
    left, right = 84.0, width - 24.0
    slot = (right - left) / len(rows)
    shapes: list[Shape] = [Text(width / 2, 14, comparison.title, 20, "mt", role="title")]
    shapes += _legend(rows, left, 56)
    shapes += _accuracy_panel(rows, left, slot, 80.0, 440.0, right)
    texts, y = _row_texts(rows, left, slot, 450.0)
    shapes += texts
    if comparison.has_scores:
        shapes += _scores_panel(rows, left, slot, y + 30, y + 270, right)
        y += 280
    y += 14
    for paragraph in caption_lines(comparison):
        for line in wrap(paragraph, width - 40, 13):
            shapes.append(Text(20, y, line, 13, "lt", role="caption"))
            y += 18
    return Scene(width, int(y + 12), tuple(shapes), comparison.title)


def write_chart(source: Path, out: Path) -> Path:
    """Draw the comparison of ``source`` (a compare folder or its ``compare.json``) into ``out``
    (SVG for ``.svg``, else a picture by extension)."""
    path = comparison_file(source) or Path(source) / COMPARE_JSON_NAME
    return save_scene(chart_scene(read_comparison(path)), out)
