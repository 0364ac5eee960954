"""Pictures of distilled sets and runs: class grids, ImageFolder exports, training curves, charts.

Everything here returns images or writes files; nothing prints. Images are shown in pixel space:
a set's normalisation or ZCA whitening is undone first (:func:`pixel_images`). Grids are built
with ``torchvision.utils.make_grid`` and labelled with pillow; curves are drawn with pillow only.
A comparison's chart is laid out as shapes (``scene``) and written as PNG or SVG. One module per
concern: ``pixels``, ``drawing``, ``files``, ``labels``, ``grid``, ``export``, ``curves``,
``animation``, ``scene``, ``compare_chart``. A set with label vectors is named in its pictures.
"""

from ddpp_cli.engine.visualize.animation import animation, animation_sources
from ddpp_cli.engine.visualize.compare_chart import (
    chart_scene,
    comparison_file,
    read_comparison,
    write_chart,
)
from ddpp_cli.engine.visualize.curves import PANELS, curves_image, panels_for, read_metrics
from ddpp_cli.engine.visualize.export import EXPORT_MANIFEST, check_export_folder, export_folder
from ddpp_cli.engine.visualize.files import image_format, save_image
from ddpp_cli.engine.visualize.grid import class_grid, grid_layout, image_box, parse_classes
from ddpp_cli.engine.visualize.labels import caption_text, run_labels, set_labels
from ddpp_cli.engine.visualize.pixels import clipped_view, pixel_images
from ddpp_cli.engine.visualize.scene import check_scene_path, save_scene

__all__ = [
    "EXPORT_MANIFEST",
    "PANELS",
    "animation",
    "animation_sources",
    "caption_text",
    "chart_scene",
    "check_export_folder",
    "check_scene_path",
    "class_grid",
    "clipped_view",
    "comparison_file",
    "curves_image",
    "export_folder",
    "grid_layout",
    "image_box",
    "image_format",
    "panels_for",
    "parse_classes",
    "pixel_images",
    "read_comparison",
    "read_metrics",
    "run_labels",
    "save_image",
    "save_scene",
    "set_labels",
    "write_chart",
]
