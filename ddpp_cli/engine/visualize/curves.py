"""Training curves of a run: its ``metrics.jsonl`` read and drawn as 2×2 panels with pillow."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.layout import METRICS_NAME
from ddpp_cli.engine.model_selection import BEST_TEST_LABEL
from ddpp_cli.engine.visualize.drawing import BACKGROUND, INK, font, text_size


def metrics_path(run: Path) -> Path:
    """``metrics.jsonl`` of a run folder (or the file itself); DdppError when there is none."""
    run = Path(run)
    path = run / METRICS_NAME if run.is_dir() else run
    if run.is_dir() and not path.is_file():
        raise DdppError(
            f"{run} holds no {METRICS_NAME}; --curves needs a 'ddpp distill' run folder."
        )
    if not path.is_file():
        raise DdppError(f"{run} does not exist; pass a 'ddpp distill' run folder.")
    if path.suffix != ".jsonl":
        raise DdppError(
            f"{run} is not a run folder; --curves needs a 'ddpp distill' run folder "
            f"(with {METRICS_NAME})."
        )
    return path


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, skipping lines that are not JSON objects.

    A line cut short by a killed write is skipped rather than failing the whole picture.
    """
    path = metrics_path(run)
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DdppError(f"cannot read {path}: {exc}.") from None
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), (int, float)):
            records.append(record)
    if not records:
        raise DdppError(f"{path} holds no metrics records yet; nothing to draw.")
    return records


def series(metrics: Sequence[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """(iteration, value) of every record that has a finite number under ``key``."""
    points = []
    for record in metrics:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value) and math.isfinite(record["iteration"]):
            points.append((float(record["iteration"]), float(value)))
    return points


def nice_ticks(low: float, high: float, target: int = 5, integer: bool = False) -> list[float]:
    """Round tick values in [low, high]: 1, 2, 2.5 or 5 × 10^k apart (whole if ``integer``)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, target)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * 0.999)
    if integer:
        step = max(1.0, 2.0 * step if step % 1 else step)
    first = math.floor(low / step + 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-6:
        ticks.append(round(value / step) * step)
        value += step
    return ticks


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Tick texts with as many decimals as the spacing needs; scientific for tiny or huge values."""
    if not ticks:
        return []
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(ticks[0]) or 1.0
    largest = max(abs(t) for t in ticks)
    if largest >= 1e6 or (largest < 1e-3 and largest > 0):
        digits = max(0, math.floor(math.log10(largest)) - math.floor(math.log10(step)))
        texts = [f"{t:.{digits}e}".replace("e-0", "e-").replace("e+0", "e") for t in ticks]
        return ["0" if t == 0 else text for t, text in zip(ticks, texts, strict=True)]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    while decimals < 10 and any(
        abs(t * 10**decimals - round(t * 10**decimals)) > 1e-6 for t in ticks
    ):
        decimals += 1  # e.g. ticks 2.5 apart need one decimal
    labels = [f"{t:.{decimals}f}" for t in ticks]
    return [label[1:] if float(label) == 0 and label.startswith("-") else label for label in labels]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` points (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


@dataclass(frozen=True)
class Panel:
    """One plot of :func:`curves_image`: a metrics key, how to scale it and what to call it."""

    key: str
    title: str
    ylabel: str
    color: tuple[int, int, int]
    scale: float = 1.0  # multiply values (1 → fraction, 100 → percent)
    smooth: bool = False  # draw a moving average over the raw values
    markers: bool = False  # mark every point (sparse series such as validation accuracy)
    unit: str = ""  # appended to the values quoted in the panel
    summary: str = "best"  # how a marked series' highest point is named


BLUE, ORANGE, GREEN, RED = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)
PANELS = (
    Panel("loss", "Matching loss", "normalised loss", BLUE, smooth=True),
    Panel(
        "pruned_fraction", "Pruned parameters", "pruned (%)", ORANGE, 100, smooth=True, unit=" %"
    ),
    Panel("lr", "Learned step size (lr)", "learned lr", GREEN),
    Panel("val_accuracy", "Validation accuracy", "accuracy (%)", RED, 100, markers=True, unit=" %"),
)
VALIDATION = PANELS[3]
# In a finished run without validation: the final test accuracy of the set, one point.
TEST = Panel(
    "test_accuracy", "Final test accuracy", "accuracy (%)", RED, 100, markers=True, unit=" %",
    summary="the set's test accuracy",
)  # fmt: skip
# A run with --selection best-test: the test accuracy of every evaluation point, best kept.
TEST_SELECTED = Panel(
    "test_accuracy", f"Test accuracy, {BEST_TEST_LABEL}", "accuracy (%)", RED, 100,
    markers=True, unit=" %",
)  # fmt: skip
# Runs of the other methods (dc, dsa, dm, cafe: no pruning, no learned lr): their loss (per
# class, as their references log it), validation and CAFE's loop lengths when recorded.
METHOD_PANELS = (
    Panel("loss", "Matching loss", "loss per class", BLUE, smooth=True),
    PANELS[3],
    Panel("image_steps", "Image steps per iteration (CAFE)", "image steps", ORANGE, smooth=True),
    Panel("inner_epochs", "Network epochs per iteration (CAFE)", "epochs", GREEN, smooth=True),
)


def panels_for(metrics: Sequence[dict[str, Any]]) -> tuple[Panel, ...]:
    """:data:`PANELS` for a tm run (or one with no records yet); :data:`METHOD_PANELS` for a run
    of another method (no pruned fraction or learned lr recorded), without CAFE's loop
    lengths where none were recorded."""
    keys = {key for record in metrics for key in record}
    if not metrics or keys & {"pruned_fraction", "lr"}:
        return PANELS
    return tuple(p for p in METHOD_PANELS if p.key in keys or p.key in ("loss", "val_accuracy"))


def _lighter(color: tuple[int, int, int], amount: float = 0.6) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * amount) for c in color)  # type: ignore[return-value]


@dataclass(frozen=True)
class _PlotArea:
    """The plot rectangle of a panel and its data ranges: maps data to pixel coordinates."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def px(self, x: float) -> float:
        span = self.x_range[1] - self.x_range[0]
        return self.left + (x - self.x_range[0]) / span * (self.right - self.left)

    def py(self, y: float) -> float:
        low, high = self.y_range
        return self.bottom - (y - low) / (high - low) * (self.bottom - self.top)


_GRID_COLOR, _AXIS_COLOR = (228, 228, 228), (90, 90, 90)


def _value_range(values: list[float]) -> tuple[float, float]:
    """The y range of a panel: the values with a 5 % margin, from 0 when none is negative."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < 1e-12 * max(1.0, abs(high)):
        spread = abs(high) * 0.05 or 1.0
        low, high = low - spread, high + spread
    else:
        margin = (high - low) * 0.05
        low, high = low - margin, high + margin
    if min(values) >= 0 > low:
        low = 0.0  # losses, fractions and accuracies are never negative
    return low, high


def _draw_panel(
    canvas: Image.Image,
    box: tuple[int, int, int, int],
    panel: Panel,
    points: list[tuple[float, float]],
    x_range: tuple[float, float],
    unit: int,
) -> None:
    """Draw one panel (title, axes, ticks, labels, the curve) inside ``box`` of ``canvas``."""
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = box
    title_face, label_face, tick_face = font(int(unit * 1.25)), font(unit), font(int(unit * 0.9))
    draw.text(
        ((left + right) / 2, top + unit * 0.4), panel.title, fill=INK, font=title_face, anchor="mt"
    )
    values = [v * panel.scale for _, v in points]
    low, high = _value_range(values)
    y_ticks = [t for t in nice_ticks(low, high) if low - 1e-12 <= t <= high + 1e-12]
    x_ticks = [
        t for t in nice_ticks(*x_range, target=6, integer=True) if x_range[0] <= t <= x_range[1]
    ]
    y_text_width = max((text_size(t, tick_face)[0] for t in tick_labels(y_ticks)), default=0)
    plot = _PlotArea(
        left=left + int(unit * 2.2) + y_text_width + int(unit * 0.6),
        top=top + int(unit * 2.4),
        right=right - int(unit * 1.2),
        bottom=bottom - int(unit * 3.4),
        x_range=x_range,
        y_range=(low, high),
    )
    _draw_axes(draw, plot, x_ticks, y_ticks, unit, tick_face)
    _draw_axis_labels(canvas, draw, plot, panel.ylabel, left, bottom, unit, label_face)
    if not points:
        middle = ((plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2)
        text = "no values recorded (yet)"
        draw.text(middle, text, fill=_AXIS_COLOR, font=label_face, anchor="mm")
        return
    _draw_curve(draw, plot, panel, points, values, unit, tick_face)


def _draw_axes(
    draw: ImageDraw.ImageDraw, plot: _PlotArea, x_ticks: list[float], y_ticks: list[float],
    unit: int, tick_face: Any,
) -> None:  # fmt: skip
    """Grid lines, tick marks and tick labels on both axes, and the plot's frame."""
    tick = max(3, unit // 3)
    for value, text in zip(y_ticks, tick_labels(y_ticks), strict=True):
        y = plot.py(value)
        draw.line([(plot.left, y), (plot.right, y)], fill=_GRID_COLOR)
        draw.line([(plot.left - tick, y), (plot.left, y)], fill=_AXIS_COLOR)
        draw.text((plot.left - tick - 3, y), text, fill=INK, font=tick_face, anchor="rm")
    for value, text in zip(x_ticks, tick_labels(x_ticks), strict=True):
        x = plot.px(value)
        draw.line([(x, plot.top), (x, plot.bottom)], fill=_GRID_COLOR)
        draw.line([(x, plot.bottom), (x, plot.bottom + tick)], fill=_AXIS_COLOR)
        draw.text((x, plot.bottom + tick + 2), text, fill=INK, font=tick_face, anchor="mt")
    draw.rectangle([plot.left, plot.top, plot.right, plot.bottom], outline=_AXIS_COLOR)


def _draw_axis_labels(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, plot: _PlotArea, ylabel: str, left: int,
    bottom: int, unit: int, label_face: Any,
) -> None:  # fmt: skip
    """ "iteration" under the x axis, the quantity rotated along the y axis."""
    draw.text(
        ((plot.left + plot.right) / 2, bottom - unit * 0.5),
        "iteration",
        fill=INK,
        font=label_face,
        anchor="mb",
    )
    width, height = text_size(ylabel, label_face)
    label = Image.new("RGBA", (width + 4, height + 8), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2, 2), ylabel, fill=INK, font=label_face, anchor="lt")
    label = label.rotate(90, expand=True)
    canvas.paste(
        label, (left + int(unit * 0.5), int((plot.top + plot.bottom) / 2 - label.height / 2)), label
    )


def _draw_curve(
    draw: ImageDraw.ImageDraw, plot: _PlotArea, panel: Panel, points: list[tuple[float, float]],
    values: list[float], unit: int, tick_face: Any,
) -> None:  # fmt: skip
    """The curve (smoothed over a light raw line when long), markers, and its note: the best
    point for marked panels, else the last value."""
    xy = [(plot.px(x), plot.py(v)) for (x, _), v in zip(points, values, strict=True)]
    line_width = max(1, unit // 7)
    if panel.smooth and len(points) > 20:
        draw.line(xy, fill=_lighter(panel.color), width=1)
        window = max(2, len(points) // 40)
        smooth = moving_average(values, window)
        draw.line(
            [(x, plot.py(v)) for (x, _), v in zip(xy, smooth, strict=True)],
            fill=panel.color,
            width=line_width + 1,
            joint="curve",
        )
        note = f"light: every iteration; dark: mean of {window}"
        draw.text(
            (plot.right - 4, plot.top + 4), note, fill=_AXIS_COLOR, font=tick_face, anchor="rt"
        )
    elif len(xy) > 1:
        draw.line(xy, fill=panel.color, width=line_width + 1, joint="curve")
    if panel.markers or len(xy) == 1:
        r = max(2, unit // 4)
        for x, y in xy:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=panel.color)
    if panel.markers:
        best = max(range(len(values)), key=lambda k: values[k])
        x, y = xy[best]
        r = max(4, unit // 2)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=INK, width=2)
        where = "after" if panel.key == TEST.key else "at"
        note = (
            f"{panel.summary} {values[best]:.2f}{panel.unit} {where} iteration {points[best][0]:g}"
        )
        draw.text((plot.right - 4, plot.bottom - 4), note, fill=INK, font=tick_face, anchor="rb")
    else:
        last = values[-1]
        shown = tick_labels([last])[0] if 0 < abs(last) < 1e-3 else f"{last:.4g}"
        note = f"last {shown}{panel.unit}"
        draw.text((plot.left + 6, plot.top + 4), note, fill=INK, font=tick_face, anchor="lt")


def labelled_title(
    title: str | None, metrics: Sequence[dict[str, Any]], labels: str | None = None
) -> str | None:
    """``title`` followed by the run's ``labels`` when it made label vectors ("learned labels
    (soft CE, T 1)") and by "test-selected (MTT's convention)" when ``metrics`` holds the test
    points of a ``--selection best-test`` run (a hard-label validation run's title unchanged)."""
    if title is None:
        return None
    parts = [title, labels]
    if series(metrics, TEST_SELECTED.key):
        parts.append(BEST_TEST_LABEL)
    return ", ".join(part for part in parts if part)


def curves_image(
    metrics: Sequence[dict[str, Any]],
    *,
    size: tuple[int, int] = (1200, 800),
    title: str | None = None,
    final_test: float | None = None,
    labels: str | None = None,
) -> Image.Image:
    """Loss, pruned fraction, learned lr and validation accuracy against iteration, 2×2 panels
    (another method's run: loss and validation accuracy, and CAFE's loop lengths; see
    :func:`panels_for`).

    A ``--selection best-test`` run shows its test points in the validation panel's place and
    says "test-selected (MTT's convention)" in that panel's title and in ``title``; ``labels``
    (a run's label text, None for hard labels) follows ``title``.
    Missing keys leave their panel empty with a note (a run in progress); lines without a key are
    skipped for that curve. A finished run that never validated and whose final test accuracy
    is known (``final_test``, a fraction) shows that accuracy in the validation panel's place.
    Per-iteration curves (loss, pruned fraction) show the raw values faintly and a moving average
    on top.
    """
    width, height = int(size[0]), int(size[1])
    if width < 300 or height < 200:
        raise DdppError(f"curves need at least 300×200 pixels, got {width}×{height}.")
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    unit = max(9, round(min(width / 2, height / 2) / 26))
    header = int(unit * 2.2) if title else 0
    iterations = [float(r["iteration"]) for r in metrics if math.isfinite(r["iteration"])]
    x_low = min(iterations, default=0.0)
    x_high = max(iterations, default=1.0)
    if x_high <= x_low:
        x_high = x_low + 1.0
    panels = panels_for(metrics)
    points = {panel.key: series(metrics, panel.key) for panel in panels}
    tested = series(metrics, TEST_SELECTED.key) if not points.get(VALIDATION.key, True) else []
    if tested:  # --selection best-test: the test points in the validation panel's place
        panels = tuple(TEST_SELECTED if panel.key == VALIDATION.key else panel for panel in panels)
        points[TEST_SELECTED.key] = tested
    elif final_test is not None and not points.get(VALIDATION.key, True):
        panels = tuple(TEST if panel.key == VALIDATION.key else panel for panel in panels)
        points[TEST.key] = [(x_high, final_test)]
    title = labelled_title(title, metrics if tested else (), labels)
    if title:
        ImageDraw.Draw(canvas).text(
            (width / 2, unit * 0.6), title, fill=INK, font=font(int(unit * 1.3)), anchor="mt"
        )
    rows = (len(panels) + 1) // 2
    half_w, half_h = width // 2, (height - header) // rows
    for k, panel in enumerate(panels):
        col, row = k % 2, k // 2
        box = (
            col * half_w,
            header + row * half_h,
            (col + 1) * half_w,
            header + (row + 1) * half_h,
        )
        _draw_panel(canvas, box, panel, points[panel.key], (x_low, x_high), unit)
    return canvas
