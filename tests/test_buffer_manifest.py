"""The buffer manifest: ``buffer.json`` read into a typed, frozen BufferManifest, checked key by
key; a malformed key is a one-line DdppError naming the file and the key."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.functional import ParamLayout
from ddpp_cli.engine.layout import MANIFEST_NAME
from ddpp_cli.engine.preprocess import Normalization

GOOD = {
    "format": "ddpp.buffer/1",
    "dataset": "mnist",
    "arch": "convnet",
    "config": {
        "dataset": "mnist", "arch": "convnet", "epochs": 3, "lr": 0.01, "momentum": 0.0,
        "weight_decay": 0.0, "batch_size": 64, "dsa_strategy": "color_crop_cutout",
        "zca": False, "train_subset": 100, "test_subset": None, "image_size": 8, "seed": 7,
    },
    "epochs": 3,
    "layout": [["features.0.weight", [128, 1, 3, 3]], ["classifier.bias", [10]]],
    "preprocessing": {"kind": "normalize", "mean": [0.1307], "std": [0.3081]},
    "data": {
        "channels": 1, "image_size": [8, 8], "num_classes": 10,
        "class_names": [str(i) for i in range(10)], "train_size": 100, "test_size": 50,
    },
    "experts": [
        {"index": 0, "file": "expert_0000.safetensors", "final_test_accuracy": 0.5},
        {"index": 1, "file": "expert_0001.safetensors", "final_test_accuracy": None},
    ],
    "ddpp_version": "0.1.0",
}  # fmt: skip


def _write(folder: Path, content: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).write_text(json.dumps(content))
    return folder


def _with(key: str, value: object) -> dict:
    """GOOD with ``key`` (``a`` or ``a.b``) set to ``value``."""
    content = copy.deepcopy(GOOD)
    *parents, last = key.split(".")
    target = content
    for name in parents:
        target = target[name]
    target[last] = value
    return content


def test_a_good_manifest_is_read_into_attributes(tmp_path):
    manifest = buffer_engine.read_manifest(_write(tmp_path, GOOD))
    assert manifest.path == tmp_path / MANIFEST_NAME
    assert (manifest.dataset, manifest.arch, manifest.epochs) == ("mnist", "convnet", 3)
    assert manifest.config == GOOD["config"]
    assert (manifest.image_size, manifest.seed, manifest.train_subset) == (8, 7, 100)
    assert (manifest.lr, manifest.batch_size) == (0.01, 64)
    assert manifest.preprocessing == GOOD["preprocessing"]
    assert (manifest.preprocessing_kind, manifest.is_zca) == ("normalize", False)
    assert manifest.normalization == Normalization((0.1307,), (0.3081,))
    assert manifest.layout == ParamLayout.from_json(GOOD["layout"])
    data = manifest.data
    assert (data.channels, data.image_size, data.num_classes) == (1, (8, 8), 10)
    assert (data.train_size, data.test_size, data.source) == (100, 50, None)
    assert data.class_names == tuple(str(i) for i in range(10))
    assert manifest.source is None
    assert [(e.index, e.file, e.final_test_accuracy) for e in manifest.experts] == [
        (0, "expert_0000.safetensors", 0.5),
        (1, "expert_0001.safetensors", None),
    ]
    assert manifest.to_json() == GOOD
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.epochs = 4  # type: ignore[misc]


def test_a_zca_or_imported_manifest_and_what_it_may_leave_out(tmp_path):
    imported = {
        **GOOD,
        "config": {"imported_from": "/mtt/CIFAR10/ConvNet", "dataset": "mnist",
                   "arch": "convnet", "zca": True, "image_size": None},
        "preprocessing": {"kind": "zca", "zca_file": "zca.safetensors", "regularization": 0.1},
        "data": {**GOOD["data"], "source": "/data/xrays"},
    }  # fmt: skip
    manifest = buffer_engine.read_manifest(_write(tmp_path / "imported", imported))
    assert (manifest.is_zca, manifest.normalization) == (True, None)
    assert (manifest.lr, manifest.batch_size, manifest.seed, manifest.image_size) == (
        None, None, 0, None,
    )  # fmt: skip
    assert manifest.source == "/data/xrays"
    bare = {"format": "ddpp.buffer/1", "dataset": "mnist", "arch": "convnet"}
    manifest = buffer_engine.read_manifest(_write(tmp_path / "bare", bare))
    assert (manifest.config, manifest.epochs, manifest.preprocessing) == ({}, None, {})
    assert (manifest.preprocessing_kind, manifest.source, manifest.experts) == (None, None, ())
    with pytest.raises(DdppError, match=r"buffer\.json is not a usable buffer manifest: 'layout'"):
        manifest.layout  # noqa: B018 (the property raises)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dataset", 3),
        ("arch", None),
        ("epochs", "50"),
        ("epochs", -1),
        ("epochs", True),
        ("config", ["lr", 0.01]),
        ("config.image_size", "8"),
        ("config.seed", 1.5),
        ("config.train_subset", "all"),
        ("config.batch_size", False),
        ("config.lr", "0.01"),
        ("config.zca", "yes"),
        ("config.imported_from", 3),
        ("preprocessing", "zca"),
        ("preprocessing.kind", "whiten"),
        ("data", [1, 28]),
        ("data.channels", "1"),
        ("data.image_size", [8, "8"]),
        ("data.num_classes", 10.0),
        ("data.class_names", "0123456789"),
        ("data.train_size", "100"),
        ("data.source", 5),
        ("experts", {"0": "expert_0000.safetensors"}),
        ("experts", [{"index": "0", "file": "expert_0000.safetensors"}]),
        ("layout", "convnet"),
        ("layout", [["features.0.weight"]]),
    ],
)
def test_each_malformed_key_is_a_one_line_error_naming_the_file_and_key(tmp_path, key, value):
    folder = _write(tmp_path / "b", _with(key, value))
    with pytest.raises(DdppError) as caught:
        buffer_engine.read_manifest(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert str(folder / MANIFEST_NAME) in message
    assert f"'{key}'" in message


def test_an_unusable_normalization_names_the_file_and_key(tmp_path):
    folder = _write(tmp_path, _with("preprocessing", {"kind": "normalize", "mean": "x"}))
    manifest = buffer_engine.read_manifest(folder)  # read: only a stage that normalises needs it
    with pytest.raises(DdppError, match=r"buffer\.json is not a usable .*'preprocessing'"):
        manifest.normalization  # noqa: B018 (the property raises)


def test_what_is_no_manifest_at_all(tmp_path):
    with pytest.raises(DdppError, match=r"is not a ddpp buffer \(no buffer\.json\)"):
        buffer_engine.read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{")
    with pytest.raises(DdppError, match="is not readable JSON"):
        buffer_engine.read_manifest(tmp_path)
    _write(tmp_path, _with("format", "ddpp.buffer/2"))
    with pytest.raises(DdppError, match=r"is not a ddpp\.buffer/1 manifest"):
        buffer_engine.read_manifest(tmp_path)


def test_the_cli_prints_a_malformed_manifest_on_one_line(tmp_path):
    folder = _write(tmp_path / "b", _with("epochs", "many"))
    result = CliRunner().invoke(
        app, ["distill", "--dataset", "mnist", "--ipc", "1", "--buffer", str(folder),
              "--out", str(tmp_path / "run"), "--no-download"],
    )  # fmt: skip
    assert_one_line_error(result, "buffer.json", "'epochs'")
