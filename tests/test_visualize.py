"""Pictures: grid pixels equal the restored images, exports round-trip, curves, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import distilled, zca
from ddpp_cli.engine import visualize as vis
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.preprocess import Normalization
from ddpp_cli.engine.visualize.curves import nice_ticks, tick_labels
from ddpp_cli.engine.visualize.export import folder_names
from ddpp_cli.engine.visualize.pixels import to_uint8

runner = CliRunner()
TOLERANCE = 1 / 255 + 1e-6
NAMES = ("airplane", "cat/dog", "ship")
MEAN, STD = (0.49, 0.48, 0.45), (0.20, 0.21, 0.19)


def pixels_for(labels: list[int], shape=(3, 8, 8), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(len(labels), *shape, generator=generator)


def normalized_set(labels=(0, 0, 1, 1, 2, 2), names=NAMES, shape=(3, 8, 8)) -> DistilledSet:
    labels = list(labels)
    pixels = pixels_for(labels, shape)
    mean, std = MEAN[: shape[0]], STD[: shape[0]]
    return distilled.DistilledSet(
        images=Normalization(mean, std).apply(pixels),
        labels=torch.tensor(labels),
        lr=0.0123,
        dataset="toy",
        class_names=tuple(names),
        preprocessing={"kind": "normalize", "mean": list(mean), "std": list(std)},
        source="test",
    )


DistilledSet = distilled.DistilledSet


@pytest.fixture
def norm_set() -> DistilledSet:
    return normalized_set()


@pytest.fixture
def zca_set(tmp_path) -> DistilledSet:
    """A ZCA-whitened set whose ZCA (fitted on a few random images) lives in a file."""
    fit_on = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 192×192 eigh is instant on one thread, slow on busy shared cores
    try:
        whitening = zca.fit(fit_on)
    finally:
        torch.set_num_threads(threads)
    path = zca.save(whitening, tmp_path / "zca.safetensors")
    labels = [0, 1, 1, 2, 2, 2]
    return distilled.DistilledSet(
        images=zca.load(path).apply(pixels_for(labels, seed=1)),
        labels=torch.tensor(labels),
        lr=None,
        dataset="toy",
        class_names=NAMES,
        preprocessing=distilled.zca_reference(path),
        source="test",
    )


def array(image: Image.Image) -> torch.Tensor:
    """(H, W, C) integer pixels of ``image``."""
    values = torch.from_numpy(numpy.array(image)).to(torch.int32)
    return values[:, :, None] if values.ndim == 2 else values


def crop(image: Image.Image, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The (C, H, W) block of ``image`` in [0, 1]."""
    return array(image.crop(box)).permute(2, 0, 1).float() / 255


def expected_block(pixels: torch.Tensor, upsample: int) -> torch.Tensor:
    return F.interpolate(pixels[None], scale_factor=upsample, mode="nearest")[0]


def members(labels: torch.Tensor, c: int) -> list[int]:
    return torch.nonzero(labels == c).flatten().tolist()


# ----------------------------------------------------------------------------- grid


@pytest.mark.parametrize("upsample,max_per_row", [(1, 10), (3, 1), (2, 2)])
def test_grid_block_is_the_image_with_normalisation_undone(norm_set, upsample, max_per_row):
    pixels = Normalization(MEAN, STD).invert(norm_set.images)
    grid = vis.class_grid(norm_set, upsample=upsample, max_per_row=max_per_row)
    assert grid.mode == "RGB"
    assert grid.size == vis.grid_layout(norm_set, upsample=upsample, max_per_row=max_per_row).size
    for c in range(3):
        for i, index in enumerate(members(norm_set.labels, c)):
            box = vis.image_box(norm_set, c, i, upsample=upsample, max_per_row=max_per_row)
            assert box[2] - box[0] == 8 * upsample
            block = crop(grid, box)
            assert (block - expected_block(pixels[index], upsample)).abs().max() <= TOLERANCE


def test_grid_block_is_the_image_with_zca_undone(zca_set):
    pixels = pixels_for([0, 1, 1, 2, 2, 2], seed=1)  # what the set was whitened from
    grid = vis.class_grid(zca_set, upsample=2)
    for c, i, index in ((0, 0, 0), (1, 1, 2), (2, 0, 3), (2, 2, 5)):
        block = crop(grid, vis.image_box(zca_set, c, i, upsample=2))
        assert (block - expected_block(pixels[index], 2)).abs().max() <= TOLERANCE


def test_zca_set_whose_file_moved_needs_zca_option(zca_set, tmp_path):
    moved = tmp_path / "elsewhere.safetensors"
    Path(zca_set.preprocessing["zca_file"]).rename(moved)
    with pytest.raises(DdppError, match="--zca-file"):
        vis.class_grid(zca_set)
    pixels = vis.pixel_images(zca_set, zca_path=moved)
    assert (pixels - pixels_for([0, 1, 1, 2, 2, 2], seed=1)).abs().max() < 1e-4


def test_grid_subset_order_grayscale_and_labels():
    gray = normalized_set(labels=(0, 1, 1, 2), shape=(1, 6, 6))
    pixels = Normalization(MEAN[:1], STD[:1]).invert(gray.images)
    grid = vis.class_grid(gray, classes=[2, 1])
    assert grid.mode == "L"
    layout = vis.grid_layout(gray, classes=[2, 1])
    assert layout.box(2, 0)[1] < layout.box(1, 0)[1]  # class 2 drawn first
    block = crop(grid, layout.box(1, 1))
    assert (block - pixels[2]).abs().max() <= TOLERANCE
    with pytest.raises(DdppError, match="not in this grid"):
        layout.box(0, 0)
    with pytest.raises(DdppError, match="no image 2"):
        layout.box(1, 2)
    # Class names are drawn in the label column on the left.
    labels = array(grid.crop((0, 0, layout.margin, grid.height)))
    assert layout.margin > 0 and int((labels < 128).sum()) > 10


def test_wrapped_classes_are_separated():
    many = normalized_set(labels=(0,) * 5 + (1,) * 5, names=NAMES[:2])
    layout = vis.grid_layout(many, max_per_row=2)
    assert layout.block_rows == (3, 3) and layout.gap > 0
    assert layout.box(1, 0)[1] - layout.box(0, 4)[3] > layout.padding
    assert layout.box(0, 1)[1] == layout.box(0, 0)[1]  # same row
    assert layout.box(0, 2)[0] == layout.box(0, 0)[0]  # wrapped to column 0


def test_clipped_view_clamps_outliers_per_image(norm_set):
    pixels = torch.full((2, 1, 10, 10), 0.5)
    pixels[0, 0, :5] = 0.4
    pixels[0, 0, 0, 0] = 3.0  # one wild pixel, far outside mean ± 2.5 std
    pixels[1] = 0.3  # a constant image
    view = vis.clipped_view(pixels)
    assert view.min() >= 0 and view.max() <= 1
    assert view[0].max() == 1 and view[0].min() == 0
    # The outlier is clamped, so the rest keeps its contrast instead of going black.
    stretched = (0.5 - 0.4) / (3.0 - 0.4)  # what a plain min–max stretch would give
    assert view[0, 0, 9, 9] > 3 * stretched
    assert torch.all(view[1] == 0)
    grid = vis.class_grid(norm_set, clip=True)
    raw = Normalization(MEAN, STD).invert(norm_set.images)
    block = crop(grid, vis.image_box(norm_set, 1, 0))
    assert (block - vis.clipped_view(raw)[2]).abs().max() <= TOLERANCE


def test_parse_classes(norm_set):
    assert vis.parse_classes(None, NAMES) is None
    assert vis.parse_classes("2, 0,2", NAMES) == (2, 0)
    assert vis.parse_classes("Ship,cat/dog", NAMES) == (2, 1)
    for bad in ("3", "-1", "truck"):
        with pytest.raises(DdppError):
            vis.parse_classes(bad, NAMES)


# ----------------------------------------------------------------------------- export


def test_folder_names_are_safe_unique_and_sorted_in_class_order():
    names = ["T-shirt/top", "..", "", "a b", "ünïcode", "x" * 100, *(f"c{k}" for k in range(6))]
    folders = folder_names(names)
    assert sorted(folders) == folders and len(set(folders)) == len(folders)
    assert folders[:4] == ["00_T-shirt_top", "01", "02", "03_a_b"]
    assert all("/" not in f and not f.startswith(".") and len(f) <= 64 for f in folders)


@pytest.mark.parametrize("kind", ["normalize", "zca"])
def test_export_round_trips_through_imagefolder(kind, norm_set, zca_set, tmp_path):
    chosen = norm_set if kind == "normalize" else zca_set
    manifest = vis.export_folder(chosen, tmp_path / "export")
    folder = ImageFolder(str(tmp_path / "export"), transform=transforms.ToTensor())
    assert folder.classes == manifest["folders"]
    assert folder.classes == folder_names(NAMES)
    expected = to_uint8(vis.pixel_images(chosen)).float() / 255
    by_path = {Path(p).relative_to(tmp_path / "export").as_posix(): t for p, t in folder.samples}
    assert sorted(by_path) == sorted(manifest["files"])
    for index, relative in enumerate(manifest["files"]):
        assert by_path[relative] == int(chosen.labels[index])  # ImageFolder's label = set's
        position = [p for p, _ in folder.samples].index(str(tmp_path / "export" / relative))
        image, label = folder[position]
        assert label == manifest["labels"][index]
        assert (image - expected[index]).abs().max() <= 1e-6
    original = vis.pixel_images(chosen)
    assert (expected - original).abs().max() <= 0.5 / 255 + 1e-6
    saved = json.loads((tmp_path / "export" / "set.json").read_text())
    assert saved["labels"] == chosen.labels.tolist()
    assert saved["lr"] == (None if chosen.lr is None else pytest.approx(chosen.lr, rel=1e-6))
    assert saved["class_names"] == list(NAMES) and saved["dataset"] == "toy"


def test_export_grayscale_and_re_export(tmp_path):
    gray = normalized_set(labels=(0, 1, 2, 2), shape=(1, 5, 5))
    out = tmp_path / "export"
    vis.export_folder(gray, out)
    assert Image.open(out / "02_ship" / "0001.png").mode == "L"
    smaller = normalized_set(labels=(0, 1, 2), shape=(1, 5, 5))
    with pytest.raises(DdppError, match="already holds an export; pass --force"):
        vis.export_folder(smaller, out)
    vis.export_folder(smaller, out, force=True)  # replaces the earlier export
    assert not (out / "02_ship" / "0001.png").exists()
    assert len(ImageFolder(str(out))) == 3
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DdppError, match="not empty"):
        vis.export_folder(gray, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- curves


def write_metrics(folder: Path, iterations: int = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"iteration": 0, "lr": 0.01, "val_accuracy": 0.5, "seconds": 1.0})]
    for it in range(1, iterations + 1):
        record = {
            "iteration": it, "loss": 1.0 / (1 + 0.05 * it) + 0.02 * (it % 3),
            "pruned_fraction": 0.01 + 0.001 * (it % 5), "lr": 0.01 + 1e-6 * it,
            "start_epoch": it % 4, "seconds": 0.4,
        }  # fmt: skip
        if it % 20 == 0:
            record["val_accuracy"] = 0.5 + it / 400
        lines.append(json.dumps(record))
    lines.append('{"iteration": 61, "loss": 0.')  # a line cut short by a kill
    path = folder / "metrics.jsonl"
    path.write_text("\n".join(lines))
    return path


def colour_count(image: Image.Image, box, colour, tolerance: int = 40) -> int:
    region = array(image.crop(box)).reshape(-1, 3)
    return int(((region - torch.tensor(colour)).abs().max(dim=1).values <= tolerance).sum())


@pytest.mark.parametrize("size", [(1200, 800), (700, 500)])
def test_curves_draw_four_panels(tmp_path, size):
    write_metrics(tmp_path / "run")
    metrics = vis.read_metrics(tmp_path / "run")
    assert len(metrics) == 61  # the cut-short line is skipped
    image = vis.curves_image(metrics, size=size)
    assert image.size == size
    width, height = size
    for k, panel in enumerate(vis.PANELS):
        col, row = k % 2, k // 2
        box = (col * width // 2, row * height // 2, (col + 1) * width // 2, (row + 1) * height // 2)
        region = array(image.crop(box)).reshape(-1, 3)
        assert int((region != 255).any(dim=1).sum()) > 500, panel.key  # axes, ticks, text
        assert colour_count(image, box, panel.color) > 20, panel.key  # the curve itself


def test_curves_leave_missing_quantities_empty(tmp_path):
    metrics = [{"iteration": i, "loss": 1.0 / (i + 1)} for i in range(10)]
    image = vis.curves_image(metrics, size=(800, 600))
    assert colour_count(image, (0, 0, 400, 300), vis.PANELS[0].color) > 20
    for k in (1, 2, 3):
        col, row = k % 2, k // 2
        box = (col * 400, row * 300, (col + 1) * 400, (row + 1) * 300)
        assert colour_count(image, box, vis.PANELS[k].color, tolerance=10) == 0


def test_a_run_that_never_validated_shows_its_final_test_accuracy(tmp_path):
    from ddpp_cli.engine.visualize import curves

    metrics = [
        {"iteration": i, "loss": 1.0 / (i + 1), "pruned_fraction": 0.01, "lr": 0.01}
        for i in range(60)
    ]  # the quick profile: no validation
    with_test = curves.curves_image(metrics, size=(800, 600), final_test=0.727)
    in_progress = curves.curves_image(metrics, size=(800, 600))
    box = (400, 300, 800, 600)  # the fourth panel
    assert colour_count(with_test, box, curves.TEST.color, tolerance=10) > 10  # the marker
    assert colour_count(in_progress, box, curves.TEST.color, tolerance=10) == 0  # note only
    assert array(with_test.crop(box)).tolist() != array(in_progress.crop(box)).tolist()
    validated = [{**m, "val_accuracy": 0.5} if m["iteration"] % 20 == 0 else m for m in metrics]
    drawn = curves.curves_image(validated, size=(800, 600), final_test=0.727)
    plain = curves.curves_image(validated, size=(800, 600))
    assert array(drawn).tolist() == array(plain).tolist()  # validation, when there, is shown


def test_ticks_are_round():
    assert nice_ticks(0, 500, 6, integer=True) == [0, 100, 200, 300, 400, 500]
    assert nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]
    assert tick_labels(nice_ticks(0.0099, 0.0103)) == [
        "0.0099", "0.0100", "0.0101", "0.0102", "0.0103",
    ]  # fmt: skip
    assert tick_labels([0.0, 2e-6, 4e-6]) == ["0", "2e-6", "4e-6"]
    assert tick_labels([0.0, 2.5, 5.0]) == ["0.0", "2.5", "5.0"]


def test_metrics_errors(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(DdppError, match=r"metrics\.jsonl"):
        vis.read_metrics(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(DdppError, match="no metrics records"):
        vis.read_metrics(tmp_path / "run")


def test_animation_says_the_run_kept_no_snapshots(tmp_path):
    write_metrics(tmp_path / "run")
    with pytest.raises(DdppError, match="kept no image snapshots"):
        vis.animation(tmp_path / "run", tmp_path / "anim.gif")


# ----------------------------------------------------------------------------- CLI


def invoke(*args):
    return runner.invoke(app, ["visualize", *(str(a) for a in args)])


@pytest.fixture
def run_dir(tmp_path, norm_set) -> Path:
    run = tmp_path / "run"
    write_metrics(run)
    distilled.save(run / "distilled.safetensors", norm_set)
    return run


def test_cli_writes_grid_export_and_curves(run_dir, tmp_path):
    result = invoke(
        run_dir, "--out", tmp_path / "g.png", "--export", tmp_path / "exp",
        "--curves", tmp_path / "c.png", "--upsample", "2", "--classes", "0,2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for path in (tmp_path / "g.png", tmp_path / "exp", tmp_path / "c.png"):
        assert str(path) in result.output
    grid = Image.open(tmp_path / "g.png")
    assert (
        grid.size
        == vis.grid_layout(
            distilled.load(run_dir / "distilled.safetensors"), classes=[0, 2], upsample=2
        ).size
    )
    assert Image.open(tmp_path / "c.png").size == (1200, 800)
    assert len(ImageFolder(str(tmp_path / "exp"))) == 6

    quiet = invoke(run_dir, "--quiet")  # nothing asked for: the grid next to the set
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output.strip() == str(run_dir / "distilled-grid.png")
    assert (run_dir / "distilled-grid.png").is_file()


def test_cli_bad_inputs_exit_2_with_one_line(run_dir, tmp_path, norm_set):
    not_a_set = tmp_path / "notes.safetensors"
    not_a_set.write_text("hello")
    assert_one_line_error(invoke(not_a_set), str(not_a_set))
    assert_one_line_error(invoke(tmp_path / "missing.safetensors"), "does not exist")
    set_only = tmp_path / "set-only"
    distilled.save(set_only / "distilled.safetensors", norm_set)
    assert_one_line_error(invoke(set_only, "--curves", tmp_path / "c.png"), "metrics.jsonl")
    assert_one_line_error(
        invoke(set_only / "distilled.safetensors", "--curves", tmp_path / "c.png"), "run folder"
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(invoke(run_dir, "--out", blocker / "g.png"), "cannot write")
    assert_one_line_error(invoke(run_dir, "--out", tmp_path), "image format")
    assert_one_line_error(invoke(run_dir, "--classes", "0,7"), "out of range")
    assert_one_line_error(invoke(run_dir, "--upsample", "0"), "--upsample")
    assert_one_line_error(invoke(run_dir, "--animate", tmp_path / "a.gif"), "no image snapshots")
    assert not (tmp_path / "c.png").exists()


def test_cli_replaces_an_existing_file_or_export_only_with_force(run_dir, tmp_path, norm_set):
    for index in range(2):  # two snapshots, enough for an animation
        distilled.save(run_dir / "snapshots" / f"iter_{index:06d}.safetensors", norm_set)
    outputs = {
        "--out": tmp_path / "g.png",
        "--curves": tmp_path / "c.png",
        "--animate": tmp_path / "a.gif",
    }
    for flag, path in outputs.items():
        path.write_bytes(b"made by the user")
        assert_one_line_error(invoke(run_dir, flag, path), str(path), "--force")
        assert path.read_bytes() == b"made by the user"
        result = invoke(run_dir, flag, path, "--force")
        assert result.exit_code == 0, result.output
        Image.open(path).verify()  # replaced by a real image
    default = run_dir / "distilled-grid.png"  # the grid drawn when nothing is asked for
    default.write_bytes(b"kept")
    assert_one_line_error(invoke(run_dir), str(default), "--force")
    assert default.read_bytes() == b"kept"

    export = tmp_path / "exp"
    assert invoke(run_dir, "--export", export).exit_code == 0
    assert_one_line_error(invoke(run_dir, "--export", export), str(export), "--force")
    assert invoke(run_dir, "--export", export, "--force").exit_code == 0
    assert len(ImageFolder(str(export))) == 6
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for extra in ((), ("--force",)):  # a folder of other files is never mixed into
        assert_one_line_error(invoke(run_dir, "--export", busy, *extra), str(busy))
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------ the label mode in pictures

LEARNED_TEXT = "learned labels (soft CE, T 1)"  # DistilledSet.label_text of tm's learned labels


def soft_set(mode: str = "learned", temperature: float = 1.0, settings=None) -> DistilledSet:
    """``normalized_set``'s images and classes with (N, K) label vectors."""
    hard = normalized_set()
    vectors = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    return distilled.DistilledSet(
        images=hard.images, labels=hard.labels, lr=hard.lr, dataset=hard.dataset,
        class_names=hard.class_names, preprocessing=hard.preprocessing, source=hard.source,
        settings=settings or {}, targets=vectors, label_mode=mode, target_loss="soft-ce",
        temperature=temperature,
    )  # fmt: skip


def expected_band(width: int, text: str, size: int, mode: str = "RGB") -> Image.Image:
    """The caption band drawn independently: ``text`` at the band's padding, as the
    ``--selection best-test`` caption lays it out (pad max(4, size // 2) on every side)."""
    from PIL import ImageDraw

    from ddpp_cli.engine.visualize.drawing import font, text_size

    face = font(size)
    pad = max(4, size // 2)
    text_width, text_height = text_size(text, face)
    band = Image.new(mode, (max(width, text_width + 2 * pad), text_height + 2 * pad), "white")
    ImageDraw.Draw(band).text((pad, pad), text, fill=(33, 33, 33), font=face, anchor="lt")
    return band


def test_caption_text_names_the_labels_then_the_selection():
    assert vis.caption_text(normalized_set()) is None  # hard labels, validation: no caption
    assert vis.caption_text(soft_set()) == LEARNED_TEXT
    teacher = soft_set("teacher", 2.0, settings={"selection": "best-test"})
    assert vis.caption_text(teacher) == (
        "teacher soft labels (soft CE, T 2); test-selected (MTT's convention)"
    )
    hard_tested = normalized_set()
    hard_tested = distilled.DistilledSet(
        **{**hard_tested.__dict__, "settings": {"selection": "best-test"}}
    )
    assert vis.caption_text(hard_tested) == "test-selected (MTT's convention)"
    # A frame without label vectors of a run that made them: the run's text.
    assert vis.caption_text(normalized_set(), LEARNED_TEXT) == LEARNED_TEXT


@pytest.mark.parametrize("upsample", [1, 3])
def test_a_soft_label_grid_is_the_hard_grid_over_a_band_naming_its_labels(upsample):
    hard = vis.class_grid(normalized_set(), upsample=upsample)
    assert hard.size == vis.grid_layout(normalized_set(), upsample=upsample).size  # no band
    soft = vis.class_grid(soft_set(), upsample=upsample)
    assert soft.crop((0, 0, hard.width, hard.height)).tobytes() == hard.tobytes()
    size = vis.grid_layout(soft_set(), upsample=upsample).font_size
    band = expected_band(hard.width, LEARNED_TEXT, size)
    assert soft.size == (band.width, hard.height + band.height)
    drawn = soft.crop((0, hard.height, soft.width, soft.height))
    assert drawn.getextrema()[0][0] < 128  # ink, not a blank band
    assert drawn.tobytes() == band.tobytes()


def test_both_captions_share_one_band():
    both = soft_set("teacher", 2.0, settings={"selection": "best-test"})
    grid = vis.class_grid(both)
    plain = vis.class_grid(normalized_set())
    text = "teacher soft labels (soft CE, T 2); test-selected (MTT's convention)"
    band = expected_band(plain.width, text, vis.grid_layout(both).font_size)
    assert grid.size == (band.width, plain.height + band.height)
    assert grid.crop((0, plain.height, grid.width, grid.height)).tobytes() == band.tobytes()


def test_run_labels_read_the_summary_else_the_set(tmp_path):
    assert vis.run_labels(tmp_path / "absent") is None
    run = tmp_path / "run"
    run.mkdir()
    assert vis.run_labels(run) is None  # nothing recorded yet
    distilled.save(run / "distilled.safetensors", soft_set())
    assert vis.run_labels(run) == LEARNED_TEXT  # no summary.json yet: the set's
    (run / "summary.json").write_text(json.dumps({"labels": "hard labels"}))
    assert vis.run_labels(run) is None
    (run / "summary.json").write_text(json.dumps({"labels": "teacher soft labels (soft CE, T 2)"}))
    assert vis.run_labels(run) == "teacher soft labels (soft CE, T 2)"


def expected_title(text: str, size=(1200, 800)) -> Image.Image:
    """The title band of ``curves_image`` drawn independently: ``text`` centred at the top in
    its title font (unit = max(9, round(min(W/2, H/2) / 26)), band 2.2 units high)."""
    from PIL import ImageDraw

    from ddpp_cli.engine.visualize.drawing import font

    unit = max(9, round(min(size[0] / 2, size[1] / 2) / 26))
    band = Image.new("RGB", (size[0], int(unit * 2.2)), "white")
    ImageDraw.Draw(band).text(
        (size[0] / 2, unit * 0.6), text, fill=(33, 33, 33), font=font(int(unit * 1.3)),
        anchor="mt",
    )  # fmt: skip
    return band


def test_curves_title_names_a_runs_labels_and_nothing_else_changes(tmp_path):
    from ddpp_cli.engine.visualize import curves

    metrics = vis.read_metrics(write_metrics(tmp_path / "run").parent)
    title = "ddpp distill run r"
    assert curves.labelled_title(title, metrics, LEARNED_TEXT) == f"{title}, {LEARNED_TEXT}"
    assert curves.labelled_title(title, metrics, None) == title
    plain = vis.curves_image(metrics, title=title)
    named = vis.curves_image(metrics, title=title, labels=LEARNED_TEXT)
    expected = expected_title(f"{title}, {LEARNED_TEXT}")
    body = (0, expected.height, 1200, 800)
    assert named.crop(body).tobytes() == plain.crop(body).tobytes()  # the panels as before
    assert named.crop((0, 0, 1200, expected.height)).tobytes() == expected.tobytes()
    assert plain.crop((0, 0, 1200, expected.height)).tobytes() == expected_title(title).tobytes()


def test_cli_curves_and_animation_of_a_soft_label_run_name_its_labels(tmp_path):
    hard_run, soft_run = tmp_path / "hard" / "run", tmp_path / "soft" / "run"
    for run, chosen in ((hard_run, normalized_set()), (soft_run, soft_set())):
        write_metrics(run)
        distilled.save(run / "distilled.safetensors", chosen)
        for index in range(2):  # snapshots keep only the images (no label vectors)
            distilled.save(run / "snapshots" / f"iter_{index:06d}.safetensors", normalized_set())
        result = invoke(run, "--curves", run / "c.png", "--animate", run / "a.gif")
        assert result.exit_code == 0, result.output
    hard_curves = Image.open(hard_run / "c.png").convert("RGB")
    soft_curves = Image.open(soft_run / "c.png").convert("RGB")
    title = expected_title(f"ddpp distill run run, {LEARNED_TEXT}")
    top, body = (0, 0, 1200, title.height), (0, title.height, 1200, 800)
    assert soft_curves.crop(top).tobytes() == title.tobytes()
    assert hard_curves.crop(top).tobytes() == expected_title("ddpp distill run run").tobytes()
    assert hard_curves.crop(body).tobytes() == soft_curves.crop(body).tobytes()  # the panels
    hard_gif, soft_gif = Image.open(hard_run / "a.gif"), Image.open(soft_run / "a.gif")
    grid = vis.class_grid(normalized_set())
    band = expected_band(grid.width, LEARNED_TEXT, vis.grid_layout(normalized_set()).font_size)
    assert hard_gif.size == grid.size  # a hard-label run's frames: no band
    assert soft_gif.size == (band.width, grid.height + band.height)
    frame = array(soft_gif.convert("RGB").crop((0, grid.height, band.width, soft_gif.height)))
    assert int((frame - array(band)).abs().max()) <= 8  # the caption, up to the GIF's palette
