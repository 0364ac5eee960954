"""The chart of a comparison (engine/visualize/compare_chart.py, scene.py; ``ddpp visualize`` on
a ``ddpp run --compare`` folder): drawn from hand-written ``compare.json`` files.

Geometry is checked against the data, not against the drawing code: bars start at the zero
line, so their heights are proportional to the means; whiskers and diamonds sit at the values
the same scale gives them; the PNG shows the colours the SVG names at the same places.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import compare as compare_engine
from ddpp_cli.engine import layout
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.visualize import compare_chart as chart
from ddpp_cli.engine.visualize import scene as scene_module
from tests.conftest import assert_one_line_error

runner = CliRunner()
SVG = "{http://www.w3.org/2000/svg}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROTOCOL = {
    "arch": "convnet", "runs": 2, "epochs": 50, "lr": None, "momentum": 0.9,
    "weight_decay": 0.0005, "batch_size": 256,
    "dsa_strategy": "color_crop_cutout_flip_scale_rotate", "seed": 0, "test_subset": 2000,
}  # fmt: skip


def a_row(row, method, mean, std, reference=None, scores=None, labels=None, selection=None):
    """One row as engine/compare/table.py's RowResult.to_json writes it (the keys the chart
    reads, and a few it does not)."""
    protocol = {"test_size": 2000, "preprocessing": "normalize",
                "loss": "cross-entropy (hard labels)"}  # fmt: skip
    if labels is not None:
        protocol["label_text"] = labels
    entry = {
        "row": row, "method": method, "mean": mean, "std": std, "runs": 2, "seconds": 3.0,
        "reused": False, "set": None, "folder": f"/x/{row}",
        "budget": {"unit": None, "value": None, "paper": None, "origin": "–", "cuts": []},
        "reference": None if reference is None else {
            "accuracy": reference[0], "std": reference[1], "source": "A", "confirmed": reference[2]
        },
        "evaluation": {
            "arch": "convnet", "accuracies": [mean / 100 - std / 100, mean / 100 + std / 100],
            "mean": mean / 100, "std": std / 100, "seconds": 3.0, "lr": 0.01,
            "protocol": protocol, "selection": selection or "validation split, tested once",
        },
    }  # fmt: skip
    if scores is not None:
        entry["scores"] = scores
    return entry


ROWS = [
    a_row("random", "Random", 40.0, 5.0, reference=(51.4, None, False)),
    a_row("dsa", "DSA", 80.0, 2.0, reference=(70.6, 0.6, True)),
    a_row("ddpp", "DDPP", 60.0, 1.0),
]


def write_compare(folder: Path, rows=ROWS, **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    content = {
        "format": "ddpp.compare/1", "ddpp_version": "0.1.0", "dataset": "fashionmnist",
        "ipc": 1, "profile": "quick", "folder": str(folder), "data_folder": "/data",
        "buffer": None, "protocol": PROTOCOL, "rows": rows, "plan": {},
    }  # fmt: skip
    content.update(top)
    path = folder / "compare.json"
    path.write_text(json.dumps(content, indent=2))
    return path


def svg_of(path: Path) -> ET.Element:
    return ET.fromstring(path.read_bytes())


def by_class(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if name in (e.get("class") or "").split()]


def caption(root: ET.Element) -> str:
    return " ".join(e.text or "" for e in by_class(root, "caption"))


def points(element: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in element.get("points").split()]


# ------------------------------------------------------------------------------ the files


def test_the_format_and_file_names_are_the_tables():
    assert chart.COMPARE_FORMAT == compare_engine.FORMAT
    assert chart.CHART_NAMES == ("compare.png", "compare.svg")
    assert layout.COMPARE_CHART_NAME == "compare.png"


def test_png_and_svg_are_written_by_extension(tmp_path):
    source = write_compare(tmp_path / "c")
    png = chart.write_chart(tmp_path / "c", tmp_path / "chart.png")
    svg = chart.write_chart(source, tmp_path / "chart.svg")
    assert png.read_bytes()[:8] == PNG_MAGIC
    root = svg_of(svg)
    assert root.tag == f"{SVG}svg"
    with Image.open(png) as image:  # both the same picture size
        assert image.size == (int(root.get("width")), int(root.get("height")))
    assert root.find(f"{SVG}title").text == "ddpp run --compare: fashionmnist, IPC 1, profile quick"


def test_an_unknown_extension_or_a_folder_is_refused(tmp_path):
    write_compare(tmp_path / "c")
    with pytest.raises(DdppError, match=r"end the name with \.png or \.svg"):
        chart.write_chart(tmp_path / "c", tmp_path / "chart.pdf")
    (tmp_path / "d.svg").mkdir()
    with pytest.raises(DdppError, match="it is a folder"):
        chart.write_chart(tmp_path / "c", tmp_path / "d.svg")


# ------------------------------------------------------------------------------ what is drawn


def test_one_bar_per_row_in_table_order_and_one_diamond_per_published_figure(tmp_path):
    write_compare(tmp_path / "c")
    root = svg_of(chart.write_chart(tmp_path / "c", tmp_path / "chart.svg"))
    assert [bar.get("data-key") for bar in by_class(root, "bar")] == ["random", "dsa", "ddpp"]
    assert [w.get("data-key") for w in by_class(root, "whisker")] == ["random", "dsa", "ddpp"]
    published = by_class(root, "published")
    assert [(p.get("data-key"), p.get("class")) for p in published] == [
        ("random", "published unconfirmed"),
        ("dsa", "published confirmed"),
    ]
    assert [w.get("data-key") for w in by_class(root, "published-whisker")] == ["dsa"]
    labels = [e.text for e in by_class(root, "row-label")]
    assert labels == ["Random", "DSA", "DDPP"]
    assert [e.text for e in by_class(root, "row-value")] == [
        "40.00 ± 5.00", "80.00 ± 2.00", "60.00 ± 1.00",
    ]  # fmt: skip
    assert [e.text for e in by_class(root, "row-published")] == ["pub. 51.4", "pub. 70.6 ± 0.6"]


def test_bars_whiskers_and_diamonds_are_to_scale(tmp_path):
    write_compare(tmp_path / "c")
    root = svg_of(chart.write_chart(tmp_path / "c", tmp_path / "chart.svg"))
    bars = {bar.get("data-key"): bar for bar in by_class(root, "bar")}
    baseline = {float(b.get("y")) + float(b.get("height")) for b in bars.values()}
    assert len(baseline) == 1  # every bar stands on the zero line
    zero = baseline.pop()
    px_per_point = float(bars["random"].get("height")) / 40.0
    assert float(bars["dsa"].get("height")) == pytest.approx(80.0 * px_per_point, abs=0.15)
    assert float(bars["ddpp"].get("height")) == pytest.approx(60.0 * px_per_point, abs=0.15)
    whisker = {w.get("data-key"): points(w) for w in by_class(root, "whisker")}
    ys = sorted({y for _, y in whisker["random"]})
    assert ys == pytest.approx([zero - 45.0 * px_per_point, zero - 35.0 * px_per_point], abs=0.2)
    for diamond, value in zip(by_class(root, "published"), (51.4, 70.6), strict=True):
        corners = points(diamond)
        centre_y = sum(y for _, y in corners) / 4
        assert centre_y == pytest.approx(zero - value * px_per_point, abs=0.2)
        centre_x = sum(x for x, _ in corners) / 4  # beside its bar, inside the row's slot
        bar = bars[diamond.get("data-key")]
        assert centre_x > float(bar.get("x")) + float(bar.get("width"))
    dsa_whisker = sorted({y for _, y in points(by_class(root, "published-whisker")[0])})
    assert dsa_whisker == pytest.approx(
        [zero - 71.2 * px_per_point, zero - 70.0 * px_per_point], abs=0.2
    )


def test_the_png_shows_the_svgs_shapes_in_their_colours(tmp_path):
    write_compare(tmp_path / "c")
    root = svg_of(chart.write_chart(tmp_path / "c", tmp_path / "chart.svg"))
    with Image.open(chart.write_chart(tmp_path / "c", tmp_path / "chart.png")) as image:
        pixels = image.convert("RGB")
        for bar in by_class(root, "bar"):
            x = float(bar.get("x")) + 3  # left of the whisker, below its cap
            y = float(bar.get("y")) + float(bar.get("height")) / 2
            assert pixels.getpixel((round(x), round(y))) == chart.BAR_COLOR
        fills = {"published confirmed": chart.PUBLISHED_COLOR,
                 "published unconfirmed": (255, 255, 255)}  # fmt: skip
        for diamond in by_class(root, "published"):
            corners = points(diamond)
            x, y = sum(x for x, _ in corners) / 4, sum(y for _, y in corners) / 4
            if diamond.get("data-key") == "dsa":
                x += 2.5  # the published std's whisker runs through the centre
            assert pixels.getpixel((round(x), round(y))) == fills[diamond.get("class")]


def test_the_caption_names_protocol_selection_labels_and_published_figures(tmp_path):
    write_compare(tmp_path / "c")
    root = svg_of(chart.write_chart(tmp_path / "c", tmp_path / "chart.svg"))
    text = caption(root)
    assert (
        "Protocol: convnet, 2 runs of 50 epochs from seed 0, SGD momentum 0.9, weight decay "
        "0.0005, batch 256, lr the set's learned one (else 0.01), DSA on, the same 2000 test "
        "images (normalize) for every row." in text
    )
    assert "whiskers: ± their population std." in text
    assert "Selection: validation split, tested once, for every row." in text
    assert "Labels: cross-entropy (hard labels), for every row." in text
    assert "ConvNet-3 figures from other protocols, a guide, not a target" in text
    assert "hollow: not confirmed, recalled from the papers." in text
    assert "Scores" not in text


def test_the_caption_groups_rows_that_differ_in_labels_or_selection(tmp_path):
    rows = [
        a_row("random", "Random", 40.0, 5.0, labels="hard labels"),
        a_row("herding", "Herding", 50.0, 5.0, labels="hard labels", selection="last"),
        a_row("ddpp", "DDPP", 60.0, 1.0, labels="teacher soft labels, T = 4"),
    ]
    write_compare(tmp_path / "c", rows, protocol={**PROTOCOL, "dsa_strategy": "none"})
    text = caption(svg_of(chart.write_chart(tmp_path / "c", tmp_path / "chart.svg")))
    assert "Labels: hard labels for Random, Herding; teacher soft labels, T = 4 for DDPP." in text
    assert "Selection: validation split, tested once for Random, DDPP; last for Herding." in text
    assert "DSA off" in text
    assert "Published" not in text  # no row has a published figure
    root = svg_of(tmp_path / "chart.svg")
    assert by_class(root, "published") == [] and by_class(root, "row-published") == []


# ------------------------------------------------------------------------------ scores


def test_the_scores_panel_appears_only_with_scores(tmp_path):
    scored = [
        a_row("random", "Random", 40.0, 5.0, scores={"hlr": 0.3, "ior": 0.0, "lrs": 0.6,
                                                      "ars": 0.45}),
        a_row("herding", "Herding", 50.0, 5.0),
        a_row("ddpp", "DDPP", 60.0, 1.0, scores={"hlr": -0.15, "ior": 0.25, "lrs": None}),
    ]  # fmt: skip
    write_compare(tmp_path / "s", scored)
    root = svg_of(chart.write_chart(tmp_path / "s", tmp_path / "s.svg"))
    scores = by_class(root, "score")
    keys = [(s.get("data-key"), s.get("class").split()[1]) for s in scores]
    assert keys == [
        ("random", "score-hlr"),
        ("random", "score-ior"),
        ("random", "score-lrs"),
        ("random", "score-ars"),
        ("ddpp", "score-hlr"),
        ("ddpp", "score-ior"),
    ]  # fmt: skip (a missing or null score draws nothing)
    heights = [float(s.get("height")) for s in scores]
    unit = heights[0] / 0.3
    assert heights[1] == 0.0
    assert heights[2:] == pytest.approx([0.6 * unit, 0.45 * unit, 0.15 * unit, 0.25 * unit],
                                        abs=0.15)  # fmt: skip
    zero = float(scores[0].get("y")) + heights[0]
    assert float(scores[4].get("y")) == pytest.approx(zero, abs=0.1)  # negative: below zero
    assert [e.text for e in root.iter() if e.text == "no scores"] == ["no scores"]
    assert "Scores (DD-Ranking): HLR hard-label recovery" in caption(root)
    with Image.open(chart.write_chart(tmp_path / "s", tmp_path / "s.png")) as image:
        x = float(scores[2].get("x")) + float(scores[2].get("width")) / 2
        y = float(scores[2].get("y")) + heights[2] / 2
        assert image.convert("RGB").getpixel((round(x), round(y))) == chart.SCORE_COLORS["lrs"]

    write_compare(tmp_path / "p", [a_row("random", "Random", 40.0, 5.0)])
    plain = svg_of(chart.write_chart(tmp_path / "p", tmp_path / "p.svg"))
    assert by_class(plain, "score") == [] and "Scores" not in caption(plain)
    assert float(plain.get("height")) < float(root.get("height"))


# ------------------------------------------------------------------------------ pure parts


def test_axis_ranges_enclose_the_values_on_round_ticks():
    # 55.9: ticks 20 apart (the first of 1, 2, 2.5, 5 × 10 above 55.9 / 5), up to 60.
    assert chart.axis_range([55.9]) == (0.0, 60.0, [0.0, 20.0, 40.0, 60.0])
    # -0.05 … 0.66: 0.71 / 5 = 0.142, so 0.2 apart, from -0.2 to 0.8.
    low, high, ticks = chart.axis_range([-0.05, 0.66])
    assert (low, high) == pytest.approx((-0.2, 0.8))
    assert ticks == pytest.approx([-0.2, 0.0, 0.2, 0.4, 0.6, 0.8])
    assert chart.axis_range([0.0]) == (0.0, 1.0, pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]))


def test_per_row_text_names_one_value_or_groups_rows():
    rows = [chart.ChartRow("a", "A", 1, 0, selection="x"), chart.ChartRow("b", "B", 1, 0)]
    assert chart.per_row_text(rows[:1], lambda r: r.selection) == "x, for every row"
    assert chart.per_row_text(rows, lambda r: r.selection) == "x for A; not recorded for B"


def test_svg_text_is_escaped():
    picture = scene_module.Scene(10, 10, (scene_module.Text(1, 1, "a < b & c", 12),), "t & u")
    root = ET.fromstring(scene_module.to_svg(picture).encode())
    assert [e.text for e in root.iter(f"{SVG}text")] == ["a < b & c"]
    assert root.find(f"{SVG}title").text == "t & u"


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ({"format": "ddpp.distill/1"}, "is not a ddpp comparison"),
        ({"rows": []}, "'rows' must be a non-empty list"),
        ({"rows": [ROWS[0], {"row": "x", "method": "X", "std": 1.0}]}, "rows[1].mean"),
        ({"rows": [{**ROWS[0], "mean": "high"}]}, "'rows[0].mean' must be a number"),
    ],
)
def test_a_file_that_is_no_comparison_is_refused_in_one_line(tmp_path, content, fragment):
    write_compare(tmp_path / "c", **content)
    with pytest.raises(DdppError) as error:
        chart.read_comparison(tmp_path / "c" / "compare.json")
    assert fragment in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------------ the CLI


def test_ddpp_visualize_draws_a_comparison_folder(tmp_path):
    write_compare(tmp_path / "c")
    result = runner.invoke(app, ["visualize", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert "chart:" in result.output and "3 rows of" in result.output
    result = runner.invoke(app, ["visualize", str(tmp_path / "c"), "--out",
                                 str(tmp_path / "c" / "compare.svg"), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "c" / "compare.svg")
    assert len(by_class(svg_of(tmp_path / "c" / "compare.svg"), "bar")) == 3
    # the compare.json file itself works too
    result = runner.invoke(app, ["visualize", str(tmp_path / "c" / "compare.json"), "--out",
                                 str(tmp_path / "j.png")])  # fmt: skip
    assert result.exit_code == 0 and (tmp_path / "j.png").is_file(), result.output


def test_ddpp_visualize_on_a_comparison_refuses_in_one_line(tmp_path):
    folder = tmp_path / "c"
    write_compare(folder)
    (folder / "compare.png").write_bytes(b"old")
    result = runner.invoke(app, ["visualize", str(folder)])
    assert_one_line_error(result, "compare.png", "--force")
    assert (folder / "compare.png").read_bytes() == b"old"
    result = runner.invoke(app, ["visualize", str(folder), "--force"])
    assert result.exit_code == 0 and (folder / "compare.png").read_bytes()[:8] == PNG_MAGIC
    assert_one_line_error(
        runner.invoke(app, ["visualize", str(folder), "--out", str(tmp_path / "a.pdf")]),
        "a.pdf", ".png or .svg",
    )  # fmt: skip
    assert_one_line_error(
        runner.invoke(app, ["visualize", str(folder), "--curves", str(tmp_path / "c.png")]),
        "'ddpp run --compare' folder", "--curves",
    )  # fmt: skip
    (folder / "compare.json").write_text('{"format": "ddpp.compare/1", "rows": [{"method": 1}]}')
    assert_one_line_error(
        runner.invoke(app, ["visualize", str(folder), "--force"]), "rows[0].method"
    )


# ------------------------------------------------------------------------------ ddpp run --compare


@pytest.mark.usefixtures("one_thread")
def test_compare_writes_its_chart_and_a_rerun_accepts_it(tiny_mnist, tmp_path):
    from tests.test_compare import tiny_plan

    folder = tmp_path / "c"
    options = {"data_root": tiny_mnist, "download": False}
    summary = compare_engine.compare(tiny_plan(), ("random",), folder, **options)
    assert (folder / "compare.png").read_bytes()[:8] == PNG_MAGIC
    drawn = chart.read_comparison(folder / "compare.json")
    assert [(row.row, row.label) for row in drawn.rows] == [("random", "Random")]
    assert drawn.rows[0].mean == pytest.approx(100 * summary.rows[0].result.mean)
    assert drawn.rows[0].published == chart.Published(64.9, None, False)  # MNIST IPC 1
    chart.write_chart(folder, folder / "compare.svg")  # 'ddpp visualize --out' in the folder
    again = compare_engine.compare(tiny_plan(), ("random",), folder, **options)
    assert again.rows[0].reused


def test_soft_label_rows_are_named_by_their_label_mode_in_names_and_caption(tmp_path):
    learned = "learned labels (soft CE, T 1)"
    rows = [
        a_row("random", "Random", 40.0, 5.0, labels="hard labels"),
        a_row("ddpp", "DDPP", 60.0, 1.0, labels="hard labels"),
        a_row("ddpp-learned", "DDPP, learned soft labels", 62.0, 1.0, labels=learned),
    ]
    write_compare(tmp_path / "c", rows)
    root = svg_of(chart.write_chart(tmp_path / "c", tmp_path / "chart.svg"))
    expected = f"Labels: hard labels for Random, DDPP; {learned} for DDPP, learned soft labels."
    assert caption(root).count(expected) == 1
    names = [e for e in by_class(root, "row-label") if e.get("data-key") == "ddpp-learned"]
    assert " ".join(e.text for e in names) == "DDPP, learned soft labels"
