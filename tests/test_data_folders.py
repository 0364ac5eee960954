"""Image folders: the channel count decided from the images, one-class datasets, Tiny ImageNet's
``val_annotations.txt`` kept inside ``val/images``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpp_cli.engine import data
from ddpp_cli.engine.data import folders
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


def _gray_as_rgb(path: Path, value: int) -> None:
    """A gray picture saved as RGB (three equal channels), as many tools export X-rays."""
    _save(path, np.full((8, 8, 3), value, dtype=np.uint8), "RGB")


def _colour(path: Path, value: int) -> None:
    pixels = np.full((8, 8, 3), value, dtype=np.uint8)
    pixels[..., 2] = 255 - value
    _save(path, pixels, "RGB")


def _folder(root: Path, write, test_write=None) -> Path:
    """train/ and test/ with classes a, b: image ``i`` of class ``k`` has value 40·k + 10·i."""
    for split, count in (("train", 3), ("test", 1)):
        for k, name in enumerate(("a", "b")):
            for i in range(count):
                writer = test_write if split == "test" and test_write is not None else write
                writer(root / split / name / f"{i}.png", 40 * k + 10 * i)
    return root


def _values(split: data.ImageSplit) -> list[int]:
    return (split.images[:, :, 0, 0] * 255).round().long().flatten().tolist()


@pytest.mark.parametrize("write", [_gray, _gray_as_rgb], ids=["mode-L", "gray-as-RGB"])
def test_a_folder_of_gray_images_loads_as_one_channel(tmp_path: Path, write) -> None:
    _folder(tmp_path, write)
    train, test = (data.load("imagefolder", tmp_path, split) for split in ("train", "test"))
    assert train.images.shape == (6, 1, 8, 8) and test.images.shape == (2, 1, 8, 8)
    assert _values(train) == [0, 10, 20, 40, 50, 60] and _values(test) == [0, 40]
    mean, std = data.normalization("imagefolder", train)
    assert len(mean) == len(std) == 1
    assert mean[0] == pytest.approx(train.images.mean().item(), abs=1e-6)
    data.clear_cache()
    three = data.load("imagefolder", tmp_path, channels=3)
    assert three.images.shape == (6, 3, 8, 8)
    assert torch.equal(three.images[:, 0], three.images[:, 1])
    assert torch.equal(three.images[:, 1], three.images[:, 2])
    assert torch.equal(three.images[:, :1], train.images)


def test_16_bit_gray_images_are_gray(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)).save(path)  # PIL's 16-bit gray
    with Image.open(path) as image:
        assert image.mode in folders.GRAY_MODES
    assert folders.is_gray(path)


@pytest.mark.parametrize("where", ["train", "test"])
def test_one_colour_image_makes_the_whole_dataset_three_channels(tmp_path: Path, where) -> None:
    _folder(tmp_path, _gray)
    _colour(tmp_path / where / "b" / "0.png", 200)
    train, test = (data.load("imagefolder", tmp_path, split) for split in ("train", "test"))
    assert train.images.shape[1] == test.images.shape[1] == 3
    gray = train.images[0, :, 0, 0]
    assert gray[0] == gray[1] == gray[2]  # the gray images are three equal channels


def test_channels_one_converts_colour_with_pils_l(tmp_path: Path) -> None:
    _folder(tmp_path, _colour)
    assert data.load("imagefolder", tmp_path).images.shape[1] == 3
    data.clear_cache()
    gray = data.load("imagefolder", tmp_path, channels=1)
    assert gray.images.shape == (6, 1, 8, 8)
    with Image.open(tmp_path / "train" / "b" / "2.png") as image:
        expected = image.convert("L").getpixel((0, 0))
    assert round(gray.images[5, 0, 0, 0].item() * 255) == expected


def test_the_channel_decision_is_cached_and_part_of_the_decode_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _folder(tmp_path, _gray_as_rgb)
    first = data.load("imagefolder", tmp_path)
    data.clear_cache()
    monkeypatch.setattr(folders, "is_gray", lambda path: pytest.fail("scanned again"))
    assert torch.equal(data.load("imagefolder", tmp_path).images, first.images)
    data.clear_cache()
    assert data.load("imagefolder", tmp_path, channels=3).images.shape[1] == 3
    assert len(list((tmp_path / ".ddpp-cache").glob("*.safetensors"))) == 2  # L and RGB


def test_channels_of_a_dataset_with_fixed_normalisation_are_its_own(tmp_path: Path) -> None:
    with pytest.raises(DdppError) as raised:
        data.load("cifar10", tmp_path, channels=1, download=False)
    assert str(raised.value) == (
        "--channels 1 does not apply to cifar10: its images have 3 channels; drop --channels."
    )
    assert data.channel_choices("imagefolder") == data.channel_choices("covid19-cxr") == (1, 3)
    assert data.channel_choices("mnist") == (1,)
    assert data.channel_choices("tinyimagenet") == (3,)


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
