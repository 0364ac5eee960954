"""Image folders: the channel count decided from the images, one-class datasets, Tiny ImageNet's
``val_annotations.txt`` kept inside ``val/images``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpp_cli.engine import data
from ddpp_cli.engine.errors import DdppError


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    data.clear_cache()
    yield
    data.clear_cache()


def _save(path: Path, pixels: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)


def _gray(path: Path, value: int) -> None:
    """A gray PNG as PIL writes it (mode L)."""
    _save(path, np.full((8, 8), value, dtype=np.uint8), "L")


# ----------------------------------------------------------------------- one-class datasets


@pytest.mark.parametrize("layout", ["train-test", "single"])
def test_a_one_class_dataset_is_refused_at_load(tmp_path: Path, layout: str) -> None:
    if layout == "train-test":
        for split in ("train", "test"):
            for i in range(3):
                _gray(tmp_path / split / "cats" / f"{i}.png", 10 * i)
        folder = tmp_path / "train"
    else:
        for i in range(5):
            _gray(tmp_path / "cats" / f"{i}.png", 10 * i)
        folder = tmp_path
    for split in ("train", "test"):
        with pytest.raises(DdppError) as raised:
            data.load("imagefolder", tmp_path, split)
        message = str(raised.value)
        assert message == (
            f"a dataset needs at least two classes; {folder} has one: cats (add a folder per "
            "class)."
        )
        assert "\n" not in message


# ------------------------------------------------------------- Tiny ImageNet val annotations


def _tiny(root: Path, names: list[str]) -> Path:
    """A tiny-imagenet-200 folder whose ``val_annotations.txt`` names ``names`` (class 0, 1, …)."""
    folder = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    for wnid in wnids:
        for i in range(2):
            _save(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG",
                  np.full((64, 64, 3), 40 * i, dtype=np.uint8), "RGB")  # fmt: skip
    (folder / "val" / "images").mkdir(parents=True)
    lines = [f"{name}\t{wnids[k % 2]}\t0\t0\t63\t63" for k, name in enumerate(names)]
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("name", ["../outside.JPEG", "images/../../x.JPEG", "/etc/hostname", ".."])
def test_val_annotations_naming_a_file_outside_val_images_are_refused(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _tiny(tmp_path, ["val_0.JPEG", name])
    _save(folder / "val" / "images" / "val_0.JPEG", np.zeros((64, 64, 3), np.uint8), "RGB")
    _save(folder / "val" / "outside.JPEG", np.zeros((64, 64, 3), np.uint8), "RGB")
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p))
    with pytest.raises(DdppError) as raised:
        data.load("tinyimagenet", tmp_path, "test")
    annotations = folder / "val" / "val_annotations.txt"
    assert str(raised.value) == (
        f"{annotations} line 2 names {name!r}, which is outside {folder / 'val' / 'images'}; "
        "each line must name a file in images/ (fix or replace the file)."
    )
    assert opened == []  # refused before any image is read


def test_val_annotations_inside_val_images_still_load(tmp_path: Path) -> None:
    folder = _tiny(tmp_path, ["val_0.JPEG", "./sub/../val_1.JPEG"])
    for name in ("val_0.JPEG", "val_1.JPEG"):
        _save(folder / "val" / "images" / name, np.zeros((64, 64, 3), np.uint8), "RGB")
    assert data.load("tinyimagenet", tmp_path, "test").labels.tolist() == [0, 1]
