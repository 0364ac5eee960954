"""Label vectors in distilled sets: ``ddpp.distilled/2`` round trip, version 1 unchanged for hard
labels, and the checks of the label fields."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import torch

from ddpp_cli.engine import distilled, store
from ddpp_cli.engine.errors import DdppError


def _hard_set() -> distilled.DistilledSet:
    return distilled.DistilledSet(
        images=torch.arange(4 * 8 * 8, dtype=torch.float32).reshape(4, 1, 8, 8),
        labels=torch.tensor([0, 0, 1, 1]),
        lr=None,
        dataset="fashionmnist",
        class_names=("a", "b"),
        preprocessing={"kind": "normalize", "mean": [0.5], "std": [0.25]},
    )


def _header(path) -> dict:
    """The safetensors JSON header, read by hand (8-byte little-endian length, then JSON)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length])


def test_hard_labels_stay_version_1_with_the_same_tensors(tmp_path):
    path = distilled.save(tmp_path / "set.safetensors", _hard_set())
    header = _header(path)
    assert header["__metadata__"]["format"] == "ddpp.distilled/1"
    assert set(header) - {"__metadata__"} == {"images", "labels", "lr"}
    loaded = distilled.load(path)
    assert loaded.targets is None and loaded.label_mode == "hard"
    assert loaded.label_text == "hard labels"


@pytest.mark.parametrize(
    ("mode", "loss", "temperature", "text"),
    [
        ("learned", "mse", None, "learned labels (MSE)"),
        ("teacher", "soft-ce", 2.0, "teacher soft labels (soft CE, T 2)"),
    ],
)
def test_label_vectors_round_trip_as_version_2(tmp_path, mode, loss, temperature, text):
    targets = torch.tensor([[0.9, -0.1], [0.7, 0.2], [-0.3, 1.1], [0.0, 0.5]])
    labelled = dataclasses.replace(
        _hard_set(), targets=targets, label_mode=mode, target_loss=loss, temperature=temperature
    )
    path = distilled.save(tmp_path / "set.safetensors", labelled)
    header = _header(path)
    assert header["__metadata__"]["format"] == "ddpp.distilled/2"
    assert header["targets"]["shape"] == [4, 2] and header["targets"]["dtype"] == "F32"
    loaded = distilled.load(path)
    assert torch.equal(loaded.targets, targets)
    assert (loaded.label_mode, loaded.target_loss, loaded.temperature) == (mode, loss, temperature)
    assert torch.equal(loaded.images, labelled.images) and torch.equal(
        loaded.labels, labelled.labels
    )
    assert loaded.label_text == text


@pytest.mark.parametrize(
    "change",
    [
        {"label_mode": "learned"},  # a mode without vectors
        {"targets": torch.zeros(4, 2)},  # vectors under "hard"
        {"targets": torch.zeros(3, 2), "label_mode": "learned", "target_loss": "mse"},
        {"targets": torch.zeros(4, 2), "label_mode": "learned", "target_loss": "l1"},
        {"targets": torch.zeros(4, 2), "label_mode": "teacher", "target_loss": "soft-ce"},
        {"targets": torch.zeros(4, 2), "label_mode": "learned", "target_loss": "mse",
         "temperature": 1.0},
        {"label_mode": "soft"},
    ],
)  # fmt: skip
def test_inconsistent_label_fields_are_refused(change):
    with pytest.raises(ValueError):
        dataclasses.replace(_hard_set(), **change)


def test_a_version_2_file_with_a_bad_label_key_is_one_line_naming_it(tmp_path):
    tensors = {
        "images": torch.zeros(4, 1, 8, 8),
        "labels": torch.tensor([0, 0, 1, 1]),
        "lr": torch.tensor([float("nan")]),
        "targets": torch.zeros(4, 3),  # three classes' vectors for a two-class set
    }
    meta = {
        "dataset": "fashionmnist", "class_names": ["a", "b"],
        "preprocessing": {"kind": "normalize", "mean": [0.5], "std": [0.25]},
        "source": "distill", "label_mode": "learned", "target_loss": "mse",
    }  # fmt: skip
    path = store.write(tmp_path / "bad.safetensors", tensors, store.DISTILLED_FORMAT_V2, meta)
    with pytest.raises(DdppError, match=r"bad\.safetensors: targets must be \(4, 2\)"):
        distilled.load(path)
    meta["label_mode"] = "soft"
    path = store.write(tmp_path / "mode.safetensors", tensors, store.DISTILLED_FORMAT_V2, meta)
    with pytest.raises(DdppError, match="label_mode"):
        distilled.load(path)


def test_a_newer_version_is_refused_with_an_upgrade_hint(tmp_path):
    path = store.write(
        tmp_path / "v3.safetensors", {"images": torch.zeros(1, 1, 2, 2)}, "ddpp.distilled/3", {}
    )
    with pytest.raises(DdppError, match=r"reads 'ddpp\.distilled/2'; upgrade ddpp"):
        distilled.load(path)
