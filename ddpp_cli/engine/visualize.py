"""Pictures of distilled sets and runs: class grids, ImageFolder exports and training curves.

Everything here returns images or writes files; nothing prints. Images are shown in pixel space:
a set's normalisation or ZCA whitening is undone first (:func:`pixel_images`). Grids are built
with ``torchvision.utils.make_grid`` and labelled with pillow; curves are drawn with pillow only.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ddpp_cli.engine import store
from ddpp_cli.engine.distilled import DistilledSet, resolve_preprocessing
from ddpp_cli.engine.distilled import load as load_set
from ddpp_cli.engine.errors import DdppError

EXPORT_FORMAT = "ddpp.export/1"
EXPORT_MANIFEST = "set.json"
METRICS_NAME = "metrics.jsonl"  # as written by engine/distill/
RUN_MARKERS = ("checkpoint.safetensors", "distilled.safetensors", "best.safetensors", METRICS_NAME)
CLIP_STDS = 2.5
PADDING = 2  # pixels between grid cells (make_grid's default)
BACKGROUND = (255, 255, 255)
INK = (33, 33, 33)
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".gif": "GIF"}


# ----------------------------------------------------------------------------- pixels


def pixel_images(distilled: DistilledSet, zca_path: Path | None = None) -> torch.Tensor:
    """The set's images back in [0, 1] pixel space (normalisation or ZCA undone, then clamped)."""
    preprocessing = resolve_preprocessing(distilled, zca_path)
    with torch.no_grad():
        pixels = preprocessing.invert(distilled.images.detach().float().cpu())
    return pixels.clamp(0.0, 1.0)


def clipped_view(pixels: torch.Tensor, stds: float = CLIP_STDS) -> torch.Tensor:
    """MTT's clipped view, per image: clamp to mean ± ``stds``·std, then stretch min…max to [0, 1].

    ``pixels`` are (N, C, H, W) pixel-space images before any clamping to [0, 1]; a constant
    image maps to 0 (as ``make_grid(normalize=True)`` does).
    """
    flat = pixels.reshape(pixels.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True) if flat.shape[1] > 1 else torch.zeros_like(mean)
    clipped = torch.maximum(torch.minimum(flat, mean + stds * std), mean - stds * std)
    low = clipped.min(dim=1, keepdim=True).values
    high = clipped.max(dim=1, keepdim=True).values
    return ((clipped - low) / (high - low).clamp_min(1e-5)).reshape(pixels.shape)


def _view(distilled: DistilledSet, clip: bool, zca_path: Path | None) -> torch.Tensor:
    if not clip:
        return pixel_images(distilled, zca_path)
    preprocessing = resolve_preprocessing(distilled, zca_path)
    with torch.no_grad():
        return clipped_view(preprocessing.invert(distilled.images.detach().float().cpu()))


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to 8-bit values, rounding to the nearest level (what ToTensor divides back)."""
    return (pixels.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """One (C, H, W) image in [0, 1] as a pillow image: mode L for 1 channel, RGB for 3."""
    array = to_uint8(pixels).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    if array.shape[2] == 3:
        return Image.fromarray(array, mode="RGB")
    raise DdppError(f"cannot draw images with {array.shape[2]} channels (only 1 or 3).")


# ----------------------------------------------------------------------------- fonts, files


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at ``size`` pixels (its bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _text_size(text: str, face) -> tuple[int, int]:
    left, top, right, bottom = face.getbbox(text)
    return math.ceil(right - left), math.ceil(bottom - top)


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
    _write_bytes(path, buffer.getvalue())
    return path


def _write_bytes(path: Path, payload: bytes) -> None:
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


# ----------------------------------------------------------------------------- class grid


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
    text_width = max(_text_size(text, face)[0] for text in labels)
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
) -> Image.Image:
    """One row per class (wrapping at ``max_per_row``), class names on the left, pixels restored.

    ``clip`` shows MTT's clipped view (:func:`clipped_view`); ``upsample`` enlarges each image by
    an integer factor with nearest-neighbour sampling. Grayscale sets give an L-mode image.
    """
    layout = grid_layout(distilled, classes=classes, max_per_row=max_per_row, upsample=upsample)
    pixels = _view(distilled, clip, zca_path)
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
    return canvas


# ----------------------------------------------------------------------------- export


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
    class names and folders, the dataset and where the set came from. Re-exporting into the same
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
        _write_bytes(out_dir / relative, buffer.getvalue())
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
    _write_bytes(out_dir / EXPORT_MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return manifest


# ----------------------------------------------------------------------------- run metrics


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


BLUE, ORANGE, GREEN, RED = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)
PANELS = (
    Panel("loss", "Matching loss", "normalised loss", BLUE, smooth=True),
    Panel(
        "pruned_fraction", "Pruned parameters", "pruned (%)", ORANGE, 100, smooth=True, unit=" %"
    ),
    Panel("lr", "Learned step size (lr)", "learned lr", GREEN),
    Panel("val_accuracy", "Validation accuracy", "accuracy (%)", RED, 100, markers=True, unit=" %"),
)
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
    y_text_width = max((_text_size(t, tick_face)[0] for t in tick_labels(y_ticks)), default=0)
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
    width, height = _text_size(ylabel, label_face)
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
        note = f"best {values[best]:.2f}{panel.unit} at iteration {points[best][0]:g}"
        draw.text((plot.right - 4, plot.bottom - 4), note, fill=INK, font=tick_face, anchor="rb")
    else:
        last = values[-1]
        shown = tick_labels([last])[0] if 0 < abs(last) < 1e-3 else f"{last:.4g}"
        note = f"last {shown}{panel.unit}"
        draw.text((plot.left + 6, plot.top + 4), note, fill=INK, font=tick_face, anchor="lt")


def curves_image(
    metrics: Sequence[dict[str, Any]],
    *,
    size: tuple[int, int] = (1200, 800),
    title: str | None = None,
) -> Image.Image:
    """Loss, pruned fraction, learned lr and validation accuracy against iteration, 2×2 panels
    (another method's run: loss and validation accuracy, and CAFE's loop lengths; see
    :func:`panels_for`).

    Missing keys leave their panel empty with a note; lines without a key are skipped for that
    curve. Per-iteration curves (loss, pruned fraction) show the raw values faintly and a moving
    average on top.
    """
    width, height = int(size[0]), int(size[1])
    if width < 300 or height < 200:
        raise DdppError(f"curves need at least 300×200 pixels, got {width}×{height}.")
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    unit = max(9, round(min(width / 2, height / 2) / 26))
    header = int(unit * 2.2) if title else 0
    if title:
        ImageDraw.Draw(canvas).text(
            (width / 2, unit * 0.6), title, fill=INK, font=font(int(unit * 1.3)), anchor="mt"
        )
    iterations = [float(r["iteration"]) for r in metrics if math.isfinite(r["iteration"])]
    x_low = min(iterations, default=0.0)
    x_high = max(iterations, default=1.0)
    if x_high <= x_low:
        x_high = x_low + 1.0
    panels = panels_for(metrics)
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
        _draw_panel(canvas, box, panel, series(metrics, panel.key), (x_low, x_high), unit)
    return canvas


# ----------------------------------------------------------------------------- animation


def snapshot_files(run: Path) -> list[Path]:
    """The image snapshots a run kept (``ddpp distill --snapshot-every N``), oldest first."""
    folder = Path(run) / "snapshots"
    found = [p for p in folder.glob("iter_*.safetensors") if p.stem[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[5:]))


def animation(
    run: Path, out: Path, *, seconds_per_frame: float = 0.25, **grid_options: Any
) -> Path:
    """A GIF of the class grid over a run, one frame per image snapshot the run kept.

    ``ddpp distill`` keeps snapshots only when asked (``--snapshot-every N``); for a run without
    them this raises a DdppError saying how to get them. ``grid_options`` go to
    :func:`class_grid` (``clip``, ``upsample``, ``classes``, ``max_per_row``, ``zca_path``).
    """
    files = animation_sources(run, out)
    frames = [class_grid(load_set(path), **grid_options) for path in files]
    frame_ms = max(20, round(1000 * seconds_per_frame))
    return save_image(frames[0], out, frames=frames[1:], frame_ms=frame_ms)


def animation_sources(run: Path, out: Path) -> list[Path]:
    """The snapshot files :func:`animation` would draw; DdppError when there are none or ``out``
    is not a GIF (so the CLI can check before writing anything)."""
    run = Path(run)
    if not run.is_dir():
        raise DdppError(f"--animate needs a 'ddpp distill' run folder; {run} is not a folder.")
    if not any((run / name).exists() for name in RUN_MARKERS):
        raise DdppError(f"{run} is not a 'ddpp distill' run folder; nothing to animate.")
    files = snapshot_files(run)
    if not files:
        raise DdppError(
            f"the run in {run} kept no image snapshots, so there is nothing to animate; distill "
            "with --snapshot-every N to keep the images every N iterations, or draw the final "
            "set with --out."
        )
    if Path(out).suffix.lower() != ".gif":
        raise DdppError(f"--animate writes a GIF; name the file .gif, not {Path(out).name}.")
    return files
