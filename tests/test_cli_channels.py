"""--channels: from the options to the configs, a real buffer of a gray folder, and the test
split a set of that folder is evaluated on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import baselines, data, layout, pipeline
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine import distill as distill_engine
from ddpp_cli.engine.compare import rows as compare_rows
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate.sets import load_test_split

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def gray_folder(root: Path, size: int = 16) -> Path:
    """train/ and test/ of two classes of gray PNGs (PIL mode L)."""
    generator = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for k, name in enumerate(("dark", "light")):
            for i in range(count):
                pixels = generator.integers(0, 100, (size, size), dtype=np.uint8) + 120 * k
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels, mode="L").save(path)
    return root


def test_channels_reaches_the_buffer_distill_and_run_configs(monkeypatch, tmp_path):
    seen: list[object] = []

    def record(config, *args, **kwargs):
        seen.append(config)
        raise DdppError("engine patched out")

    monkeypatch.setattr(buffer_engine, "train_buffer", record)
    monkeypatch.setattr(distill_engine, "distill", record)
    monkeypatch.setattr(pipeline, "run_pipeline", record)
    common = ["--dataset", "imagefolder", "--data-dir", tmp_path, "--channels", "1"]
    assert invoke("buffer", *common, "--out", tmp_path / "b").exit_code == 2
    assert seen[-1].channels == 1
    distill = ["distill", *common, "--ipc", "1", "--method", "dm", "--out", tmp_path / "d"]
    assert invoke(*distill).exit_code == 2
    assert seen[-1].channels == 1
    assert invoke("run", *common, "--ipc", "1", "--out", tmp_path / "r").exit_code == 2
    assert seen[-1].buffer.channels == 1
    monkeypatch.setattr(baselines, "prepare_baseline", record)
    evaluated = invoke("evaluate", "--baseline", "random", "--ipc", "1", *common)
    assert evaluated.exit_code == 2, evaluated.output
    assert seen[-1].channels == 1


def test_channels_that_do_not_apply_are_refused_in_one_line(tmp_path):
    result = invoke("buffer", "--dataset", "cifar10", "--channels", "1", "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert "--channels 1 does not apply to cifar10" in result.output
    tm = invoke("distill", "--dataset", "imagefolder", "--ipc", "1", "--channels", "3",
                "--buffer", tmp_path / "b", "--out", tmp_path / "d")  # fmt: skip
    assert tm.exit_code == 2 and "--channels does not apply to --method tm" in tm.output, tm.output
    on_a_set = invoke("evaluate", tmp_path / "set.safetensors", "--channels", "1")
    assert on_a_set.exit_code == 2 and "--channels" in on_a_set.output


@pytest.mark.slow
@pytest.mark.parametrize("channels", [None, 3])
def test_a_buffer_of_a_gray_folder_records_its_channels(tmp_path, channels):
    folder = gray_folder(tmp_path / "xrays")
    out = tmp_path / "buffer"
    extra = [] if channels is None else ["--channels", str(channels)]
    result = invoke(
        "buffer", "--dataset", "imagefolder", "--data-dir", folder, "--out", out,
        "--experts", "1", "--epochs", "1", "--device", "cpu", "--no-zca", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / layout.MANIFEST_NAME).read_text())
    assert manifest["data"]["channels"] == (channels or 1)
    assert len(manifest["preprocessing"]["mean"]) == (channels or 1)
    assert manifest["config"].get("channels") == channels  # not recorded when not given
    assert buffer_engine.read_manifest(out).data.channels == (channels or 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_set_of_a_gray_folder_is_tested_on_images_of_its_channels(tmp_path, channels):
    folder = gray_folder(tmp_path / "xrays")
    distilled = DistilledSet(
        images=torch.zeros(2, channels, 16, 16), labels=torch.tensor([0, 1]), lr=0.01,
        dataset="imagefolder", class_names=("dark", "light"),
        preprocessing={"kind": "normalize", "mean": [0.5] * channels, "std": [0.25] * channels},
        settings={},
    )  # fmt: skip
    images, labels, _ = load_test_split(distilled, data_root=folder, download=False)
    assert images.shape == (4, channels, 16, 16) and labels.tolist() == [0, 0, 1, 1]


def test_an_unset_channels_leaves_recorded_identities_as_before():
    assert "channels" not in buffer_engine.BufferConfig("imagefolder").identity()
    assert buffer_engine.BufferConfig("imagefolder", channels=1).identity()["channels"] == 1
    config = distill_engine.DistillConfig.from_preset("imagefolder", 1, method="dm")
    assert "channels" not in config.identity()
    baseline = baselines.BaselineConfig(method="random", dataset="imagefolder", ipc=1)
    assert "channels" not in baseline.describe()


def test_the_compare_rows_of_a_run_load_the_data_as_its_buffer():
    plan = pipeline.plan_run("imagefolder", 1, profile="quick", channels=1)
    assert plan.buffer.channels == 1
    assert compare_rows.matching_config(plan, "dm", 5).channels == 1
    assert (
        compare_rows.matching_config(pipeline.plan_run("imagefolder", 1), "dm", 5).channels is None
    )
