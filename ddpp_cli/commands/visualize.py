"""``ddpp visualize``: pictures of a distilled set or run (grid, export, curves, animation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from ddpp_cli.commands._display import out
from ddpp_cli.commands._options import quiet_option
from ddpp_cli.commands._renamed import ZcaFileRenamedOpt
from ddpp_cli.engine import distilled, evaluate, layout, store
from ddpp_cli.engine import visualize as visualize_engine
from ddpp_cli.engine.errors import DdppError

GridOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Write the image grid here (.png, .jpg, .webp). Default when no other output "
        "is asked for: <set>-grid.png next to the set. For a 'ddpp run --compare' folder: "
        "its chart (.png or .svg), default RUN/compare.png.",
    ),
]

ClipOpt = Annotated[
    bool,
    typer.Option(
        "--clip", help="MTT's clipped view: each image clamped to mean ± 2.5 std, stretched."
    ),
]

UpsampleOpt = Annotated[
    int, typer.Option("--upsample", help="Enlarge each image K times (nearest neighbour).")
]

ClassesOpt = Annotated[
    str | None,
    typer.Option("--classes", help="Grid of these classes only: indices or names, e.g. 0,3,7."),
]

MaxPerRowOpt = Annotated[
    int, typer.Option("--max-per-row", help="Images per row before a class wraps.")
]

ExportOpt = Annotated[
    Path | None,
    typer.Option(
        "--export",
        help="Write every image as DIR/NN_<class>/NNNN.png (a torchvision ImageFolder) plus "
        "DIR/set.json with the labels and learned lr (as 'ddpp export --format imagefolder').",
    ),
]

CurvesOpt = Annotated[
    Path | None,
    typer.Option(
        "--curves",
        help="Draw a run's loss, pruned fraction, learned lr and validation accuracy (PNG).",
    ),
]

AnimateOpt = Annotated[
    Path | None,
    typer.Option(
        "--animate",
        help="A GIF of the class grid over a run, from the snapshots 'ddpp distill "
        "--snapshot-every N' kept.",
    ),
]

ZcaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--zca-file", help="The buffer's zca.safetensors, for a ZCA set whose file moved."
    ),
]


ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Replace output files that already exist (refused without)."),
]


def command(
    target: Annotated[
        Path,
        typer.Argument(
            help="A distilled-set file, or a 'ddpp distill' run folder (best.safetensors, else "
            "distilled.safetensors; metrics.jsonl for --curves), or a 'ddpp run --compare' "
            "folder (its chart).",
            show_default=False,
        ),
    ],
    grid_out: GridOutOpt = None,
    clip: ClipOpt = False,
    upsample: UpsampleOpt = 1,
    classes: ClassesOpt = None,
    max_per_row: MaxPerRowOpt = 10,
    export: ExportOpt = None,
    curves: CurvesOpt = None,
    animate: AnimateOpt = None,
    zca_file: ZcaFileOpt = None,
    zca_renamed: ZcaFileRenamedOpt = None,
    force: ForceOpt = False,
    quiet: quiet_option("the paths written") = False,
) -> None:
    """Pictures of a set, a run or a comparison: grid, ImageFolder export, curves, animation, chart.

    An existing file (or a folder holding an earlier export) is replaced only with --force.
    A 'ddpp run --compare' folder gives the chart of its table (--out .png or .svg).
    """
    comparison = visualize_engine.comparison_file(target)
    if comparison is not None:
        _chart(target, comparison, grid_out, (export, curves, animate), force, quiet)
        return
    draw_grid = grid_out is not None or (export is None and curves is None and animate is None)
    inputs = _read_inputs(target, grid_out, curves, animate, classes, draw_grid, export)
    store.refuse_existing(
        inputs.grid_out if draw_grid else None, curves, animate, force=force
    )  # before anything is written
    if export is not None:
        visualize_engine.check_export_folder(export, force)

    def written(label: str, path: Path, note: str) -> None:
        text = str(path) if quiet else f"{label:<7} {path}  {note}"
        out.print(text, highlight=False, markup=False, soft_wrap=True)

    if draw_grid:
        _grid(inputs, max_per_row, upsample, clip, zca_file, written)
    if export is not None:
        manifest = visualize_engine.export_folder(
            inputs.set, export, zca_path=zca_file, force=force
        )
        written(
            "export:", export,
            f"({len(manifest['files'])} PNGs in {len(manifest['folders'])} class folders, "
            f"{visualize_engine.EXPORT_MANIFEST})",
        )  # fmt: skip
    if curves is not None:
        run = (target if target.is_dir() else target.parent).resolve()
        image = visualize_engine.curves_image(
            inputs.metrics, title=f"ddpp distill run {run.name}",
            labels=visualize_engine.run_labels(run),
        )  # fmt: skip
        visualize_engine.save_image(image, curves)
        written("curves:", curves, f"({len(inputs.metrics)} metrics records)")
    if animate is not None:
        visualize_engine.animation(
            target, animate, upsample=upsample, clip=clip, classes=inputs.animate_classes,
            max_per_row=max_per_row, zca_path=zca_file,
        )  # fmt: skip
        frames = len(inputs.snapshots)
        written("animate:", animate, f"({frames} frames from {target / layout.SNAPSHOTS_DIRNAME})")


@dataclass
class _Inputs:
    """What the pictures are drawn from, all read and checked before anything is written."""

    set_path: Path | None = None
    set: distilled.DistilledSet | None = None
    classes: tuple[int, ...] | None = None
    grid_out: Path | None = None
    metrics: list | None = None
    snapshots: list[Path] = field(default_factory=list)
    animate_classes: tuple[int, ...] | None = None


def _read_inputs(target, grid_out, curves, animate, classes, draw_grid, export) -> _Inputs:
    inputs = _Inputs(grid_out=grid_out)
    for path in (grid_out, curves, animate):
        if path is not None:
            visualize_engine.image_format(path)
    if draw_grid or export is not None:
        inputs.set_path = evaluate.find_set(target)
        inputs.set = distilled.load(inputs.set_path)
        inputs.classes = visualize_engine.parse_classes(classes, inputs.set.class_names)
        if grid_out is None:
            inputs.grid_out = inputs.set_path.with_name(f"{inputs.set_path.stem}-grid.png")
    if curves is not None:
        inputs.metrics = visualize_engine.read_metrics(target)
    if animate is not None:
        inputs.snapshots = visualize_engine.animation_sources(target, animate)
        first = distilled.load(inputs.snapshots[0])
        inputs.animate_classes = visualize_engine.parse_classes(classes, first.class_names)
    return inputs


def _grid(inputs: _Inputs, max_per_row: int, upsample: int, clip: bool, zca_file, written) -> None:
    distilled_set, chosen = inputs.set, inputs.classes
    arrangement = visualize_engine.grid_layout(
        distilled_set, classes=chosen, max_per_row=max_per_row, upsample=upsample
    )
    image = visualize_engine.class_grid(
        distilled_set, classes=chosen, max_per_row=max_per_row, clip=clip,
        upsample=upsample, zca_path=zca_file,
    )  # fmt: skip
    visualize_engine.save_image(image, inputs.grid_out)
    written(
        "grid:", inputs.grid_out,
        f"({len(arrangement.classes)} classes × up to {max(arrangement.counts)} images of "
        f"{inputs.set_path}, {image.width}×{image.height} px{', clipped' if clip else ''})",
    )  # fmt: skip


def _chart(
    target: Path, comparison: Path, chart_out: Path | None, others: tuple, force: bool,
    quiet: bool,
) -> None:  # fmt: skip
    """The chart of a comparison: read and checked, then written (default RUN/compare.png)."""
    if any(path is not None for path in others):
        raise DdppError(
            f"{target} is a 'ddpp run --compare' folder, which gives only its chart; drop "
            "--export, --curves and --animate (or give a set or a 'ddpp distill' run folder)."
        )
    chart_out = chart_out or comparison.with_name(layout.COMPARE_CHART_NAME)
    visualize_engine.check_scene_path(chart_out)
    table = visualize_engine.read_comparison(comparison)
    scene = visualize_engine.chart_scene(table)
    store.refuse_existing(chart_out, force=force)
    visualize_engine.save_scene(scene, chart_out)
    scores = ", scores panel" if table.has_scores else ""
    rows = f"{len(table.rows)} row{'s' if len(table.rows) > 1 else ''}"
    note = f"({rows} of {comparison}{scores}, {scene.width}×{scene.height} px)"
    out.print(str(chart_out) if quiet else f"{'chart:':<7} {chart_out}  {note}",
              highlight=False, markup=False, soft_wrap=True)  # fmt: skip
