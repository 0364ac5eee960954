"""Dataset registry: IDX parsing, torchvision errors, image folders, splits, subsets, stats."""

from __future__ import annotations

import gzip
import os
import struct
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from ddpp_cli.engine import data
from ddpp_cli.engine.data import folders
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.preprocess import prepare

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    data.clear_cache()
    yield
    data.clear_cache()


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def _fake_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 7, 7), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 7, 7), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for name, array in arrays.items():
        _write_idx(folder / name, array, gz)
    return arrays


def _png(path: Path, value: int, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> None:
    """A constant image of ``value``; in RGB a colour one (blue is ``255 - value``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0]), value, dtype=np.uint8)
    if mode == "RGB":
        pixels = np.stack([pixels, pixels, 255 - pixels], axis=-1)
    Image.fromarray(pixels, mode=mode).save(path)


# ------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_plain_and_gzip(tmp_path: Path, gz: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = _write_idx(tmp_path / "x-idx3-ubyte", array, gz)
    parsed = data.read_idx(path)
    assert parsed.dtype == torch.uint8
    assert torch.equal(parsed, torch.from_numpy(array))


def test_malformed_idx_files_are_refused(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((4, 5, 5), dtype=np.uint8))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good[:-7])
    with pytest.raises(DdppError, match="truncated"):
        data.read_idx(truncated)
    short_header = tmp_path / "short"
    short_header.write_bytes(good[:9])
    with pytest.raises(DdppError, match="truncated"):
        data.read_idx(short_header)
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(DdppError, match="not an IDX file"):
        data.read_idx(foreign)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(DdppError, match=r"broken\.gz"):
        data.read_idx(broken_gz)


@pytest.mark.parametrize(
    ("layout", "gz"),
    [(".", True), ("mnist", False), ("MNIST/raw", True), ("mnist/MNIST/raw", False)],
)
def test_mnist_loads_from_an_idx_folder(tmp_path: Path, layout: str, gz: bool) -> None:
    arrays = _fake_mnist(tmp_path / layout, gz=gz)
    train = data.load("mnist", tmp_path, download=False)
    test = data.load("mnist", tmp_path, "test", download=False)
    assert train.images.shape == (20, 1, 7, 7) and test.images.shape == (10, 1, 7, 7)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    torch.testing.assert_close(train.images, expected)
    assert train.labels.tolist() == [i % 10 for i in range(20)]
    assert train.num_classes == 10 and train.class_names[0] == "0 - zero"
    assert data.load("mnist", tmp_path, download=False) is train  # cached in-process


def test_truncated_idx_in_a_dataset_folder_names_the_file(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DdppError, match=r"train-images-idx3-ubyte is truncated"):
        data.load("fashionmnist", tmp_path, download=False)


def test_idx_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    _fake_mnist(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8), gz=True)
    with pytest.raises(DdppError, match="do not belong together"):
        data.load("mnist", tmp_path, download=False)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_loads_offline() -> None:
    train = data.load("fashionmnist", FASHION_MNIST, download=False)
    test = data.load("fashionmnist", FASHION_MNIST, "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert train.num_classes == 10 and train.class_names[0] == "T-shirt/top"
    assert data.class_counts(train).tolist() == [6000] * 10
    assert data.class_counts(test).tolist() == [1000] * 10
    mean, std = data.normalization("imagefolder", train)  # computed: matches the table
    assert mean[0] == pytest.approx(0.2861, abs=1e-3) and std[0] == pytest.approx(0.3530, abs=1e-3)


# ------------------------------------------------------------------------ registry and errors


def test_registry_names_and_info() -> None:
    assert data.available() == [
        "cifar10", "cifar100", "covid19-cxr", "fashionmnist",
        "imagefolder", "mnist", "svhn", "tinyimagenet",
    ]  # fmt: skip
    assert data.info("CIFAR10").default_zca and data.info("cifar100").default_zca
    assert not data.info("fashion-mnist").default_zca
    assert data.info("cifar100").num_classes == len(data.info("cifar100").class_names) == 100
    assert data.info("covid19-cxr").image_size == (112, 112)
    assert data.info("covid19-cxr").channels == 1
    assert data.default_root().parts[-1] == "datasets"


def test_unknown_dataset_and_split_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DdppError, match="unknown dataset 'imagenet'; choose one of: cifar10"):
        data.load("imagenet", tmp_path)
    with pytest.raises(DdppError, match="unknown split 'dev'"):
        data.load("mnist", tmp_path, "dev")


def test_missing_data_without_download_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(DdppError) as error:
        data.load("cifar10", tmp_path, download=False)
    message = str(error.value)
    assert "cifar-10-batches-py" in message and str(tmp_path / "cifar10") in message
    assert "--data-dir" in message and "--download" in message
    with pytest.raises(DdppError) as error:
        data.load("fashionmnist", tmp_path, "test", download=False)
    message = str(error.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "--data-dir" in message
    assert not (tmp_path / "cifar10").exists()  # nothing created without --download


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DdppError, match=r"could not download cifar100 .*Name or service not known"):
        data.load("cifar100", tmp_path, download=True)


def test_torchvision_arrays_are_converted_without_per_image_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert root == str(tmp_path / "cifar10") and not download
            self.data = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
            self.targets = [3, 7]
            self.classes = list(data.info("cifar10").class_names)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    split = data.load("cifar10", tmp_path, download=False)
    assert split.images.shape == (2, 3, 4, 4)
    assert split.images[0, 1, 0, 0] * 255 == pytest.approx(1.0)  # HWC -> CHW
    assert split.labels.tolist() == [3, 7] and split.class_names[3] == "cat"
    resized = data.load("cifar10", tmp_path, download=False, image_size=8)
    assert resized.images.shape == (2, 3, 8, 8)


# ------------------------------------------------------------------------------- subsets


def _toy_split(counts: list[int]) -> data.ImageSplit:
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)
    names = tuple(f"c{k}" for k in range(len(counts)))
    return data.ImageSplit(images, labels, names)


@pytest.mark.parametrize(
    ("counts", "n", "expected"),
    [
        ([50, 30, 20], 10, [5, 3, 2]),
        ([50, 30, 20], 3, [1, 1, 1]),
        ([97, 2, 1], 10, [8, 1, 1]),
        ([40, 40, 20], 7, [3, 3, 1]),
        ([5, 5], 1, [1, 0]),
    ],
)
def test_stratified_subset_counts(counts: list[int], n: int, expected: list[int]) -> None:
    split = _toy_split(counts)
    subset = data.stratified_subset(split, n, seed=0)
    assert data.class_counts(subset).tolist() == expected
    # Images travel with their labels (image value = original index).
    original = subset.images.flatten().long()
    assert torch.equal(split.labels[original], subset.labels)


def test_stratified_subset_is_seeded() -> None:
    split = _toy_split([50, 30, 20])
    first = data.stratified_subset(split, 10, seed=3)
    assert torch.equal(first.images, data.stratified_subset(split, 10, seed=3).images)
    assert not torch.equal(first.images, data.stratified_subset(split, 10, seed=4).images)
    assert data.stratified_subset(split, 100, seed=3) is split
    with pytest.raises(DdppError):
        data.stratified_subset(split, 0, seed=3)


# ------------------------------------------------------------------------------ image folders


def _make_presplit(root: Path, test_name: str = "test") -> None:
    for k, cls in enumerate(["cat", "dog", "eel"]):
        for i in range(3):
            _png(root / "train" / cls / f"{i}.png", 10 * k + i)
        _png(root / test_name / cls / "a.png", 100 + k)


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_imagefolder_with_train_and_test(tmp_path: Path, test_name: str) -> None:
    _make_presplit(tmp_path, test_name)
    train = data.load("imagefolder", tmp_path)
    test = data.load("imagefolder", tmp_path, "test")
    assert train.class_names == test.class_names == ("cat", "dog", "eel")
    assert train.images.shape == (9, 3, 8, 8) and test.images.shape == (3, 3, 8, 8)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (train.images[:, 0, 0, 0] * 255).round().tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert (test.images[:, 0, 0, 0] * 255).round().tolist() == [100, 101, 102]
    resized = data.load("imagefolder", tmp_path, image_size=4)
    assert resized.images.shape == (9, 3, 4, 4)


def test_imagefolder_with_mixed_sizes_needs_image_size(tmp_path: Path) -> None:
    _make_presplit(tmp_path)
    _png(tmp_path / "train" / "dog" / "big.png", 0, size=(12, 10))
    with pytest.raises(DdppError, match=r"differ in size.*big\.png.*--image-size"):
        data.load("imagefolder", tmp_path)
    assert data.load("imagefolder", tmp_path, image_size=8).images.shape == (10, 3, 8, 8)


def _make_covid(root: Path) -> None:
    """COVID-19 Radiography layout: <class>/images/*.png, <class>/masks/*.png (ignored)."""
    for k, (cls, count) in enumerate([("COVID", 10), ("Normal", 5), ("Viral Pneumonia", 6)]):
        for i in range(count):
            _png(root / cls / "images" / f"{cls}-{i}.png", 40 * k + i, size=(9, 9), mode="L")
            _png(root / cls / "masks" / f"{cls}-{i}.png", 255, size=(9, 9), mode="L")
    (root / "COVID.metadata.xlsx").write_bytes(b"not an image")


def test_covid_single_folder_is_split_80_20_stratified(tmp_path: Path) -> None:
    _make_covid(tmp_path / "covid19-cxr")
    train = data.load("covid19-cxr", tmp_path)
    test = data.load("covid19-cxr", tmp_path, "test")
    assert train.class_names == ("COVID", "Normal", "Viral Pneumonia")
    assert train.images.shape[1:] == (1, 112, 112)  # grayscale, resized to 112 by default
    assert data.class_counts(test).tolist() == [2, 1, 1]
    assert data.class_counts(train).tolist() == [8, 4, 5]  # masks ignored
    values = lambda s: set((s.images[:, 0, 0, 0] * 255).round().long().tolist())  # noqa: E731
    assert values(train).isdisjoint(values(test))
    assert values(train) | values(test) == {
        40 * k + i for k, c in enumerate([10, 5, 6]) for i in range(c)
    }
    data.clear_cache()
    again = data.load("covid19-cxr", tmp_path, "test")
    assert torch.equal(again.images, test.images)
    other = data.load("covid19-cxr", tmp_path, "test", seed=1)
    assert data.class_counts(other).tolist() == [2, 1, 1]
    assert values(other) != values(test)
    small = data.load("covid19-cxr", tmp_path, image_size=16)
    assert small.images.shape == (17, 1, 16, 16)


_TINY_WNIDS = ("n02124075", "n01443537", "n01629819")  # not sorted on purpose
_TINY_WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n01629819": "European fire salamander, Salamandra salamandra",
    "n02124075": "Egyptian cat",
    "n09999999": "a class of the full ImageNet list that Tiny ImageNet lacks",
}


def make_tiny_imagenet(root: Path) -> Path:
    """The official tiny-imagenet-200 layout, ``test/`` included, with 64 px JPEGs.

    Train image ``i`` of wnid ``w`` is the constant value ``40·k + 10·i`` with ``k`` the sorted
    position of ``w``; val images are ``200 + 10·k + j``; the unlabeled test images are 255.
    """
    folder = root / "tiny-imagenet-200"
    ordered = sorted(_TINY_WNIDS)
    for wnid in _TINY_WNIDS:
        k = ordered.index(wnid)
        for i in range(3):
            _png(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 40 * k + 10 * i, (64, 64))
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    annotations = []
    for number, (wnid, j) in enumerate([(w, j) for j in range(2) for w in _TINY_WNIDS]):
        name = f"val_{number}.JPEG"
        _png(folder / "val" / "images" / name, 200 + 10 * ordered.index(wnid) + j, (64, 64))
        annotations.append(f"{name}\t{wnid}\t1\t2\t50\t60")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    for n in range(4):
        _png(folder / "test" / "images" / f"test_{n}.JPEG", 255, (64, 64))
    (folder / "wnids.txt").write_text("\n".join(_TINY_WNIDS) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in _TINY_WORDS.items()))
    return folder


def test_tinyimagenet_official_archive_layout_end_to_end(tmp_path: Path) -> None:
    make_tiny_imagenet(tmp_path)
    prepared = prepare("tinyimagenet", tmp_path, use_zca=False, download=False)
    names = ("goldfish", "European fire salamander", "Egyptian cat")  # sorted wnids' order
    assert prepared.train.class_names == prepared.test.class_names == names
    assert prepared.train.images.shape == (9, 3, 64, 64)
    assert prepared.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert prepared.test.images.shape == (6, 3, 64, 64)  # val/ only: test/ has no labels
    assert prepared.test.labels.tolist() == [2, 0, 1, 2, 0, 1]  # val_annotations.txt order
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert prepared.preprocessing.describe() == {
        "kind": "normalize",
        "mean": list(mean),
        "std": list(std),
    }
    pixels = prepared.preprocessing.invert(prepared.test.images)[:, 0, 32, 32] * 255
    expected = torch.tensor([220.0, 200, 210, 221, 201, 211])
    assert torch.allclose(pixels, expected, atol=2.0)
    raw = data.load("tinyimagenet", tmp_path)
    assert torch.allclose(
        raw.images[:, 0, 32, 32] * 255,
        torch.tensor([40.0 * k + 10 * i for k in range(3) for i in range(3)]),
        atol=2.0,
    )


def test_tinyimagenet_without_words_keeps_wnids_and_generic_val_folders(tmp_path: Path) -> None:
    folder = make_tiny_imagenet(tmp_path)
    (folder / "words.txt").unlink()
    assert data.load("tinyimagenet", tmp_path).class_names == tuple(sorted(_TINY_WNIDS))
    generic = tmp_path / "generic"
    for split in ("train", "val"):
        for k, name in enumerate(["b", "a"]):
            _png(generic / split / name / "0.png", 10 * k)
    assert data.load("imagefolder", generic, "test").labels.tolist() == [0, 1]


def test_tinyimagenet_val_rearranged_into_class_folders_as_mtt_expects(tmp_path: Path) -> None:
    """MTT reads val/images/<wnid>/*.JPEG with ImageFolder; the official test/ stays ignored."""
    folder = make_tiny_imagenet(tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    for k, wnid in enumerate(sorted(_TINY_WNIDS)):
        moved = folder / "val" / "images" / wnid / f"val_{k}.JPEG"
        moved.parent.mkdir()
        (folder / "val" / "images" / f"val_{k}.JPEG").rename(moved)
    for extra in (folder / "val" / "images").glob("*.JPEG"):
        extra.unlink()
    test = data.load("tinyimagenet", tmp_path, "test")
    assert test.labels.tolist() == [0, 1, 2]
    assert test.class_names[0] == "goldfish"


def test_folder_decode_is_cached_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_presplit(tmp_path)
    first = data.load("imagefolder", tmp_path)
    cached = list((tmp_path / ".ddpp-cache").glob("*.safetensors"))
    assert len(cached) == 1
    data.clear_cache()

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(folders, "_decode_all", no_decoding)
    second = data.load("imagefolder", tmp_path)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    data.clear_cache()
    changed = tmp_path / "train" / "cat" / "0.png"
    _png(changed, 99)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        data.load("imagefolder", tmp_path)


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DdppError, match=r"no covid19-cxr data found.*--data-dir"):
        data.load("covid19-cxr", tmp_path / "absent")
    _make_presplit(tmp_path)
    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(DdppError, match=r"class folder .*fox has no images"):
        data.load("imagefolder", tmp_path)
    (tmp_path / "train" / "fox" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DdppError, match=r"cannot read image .*broken\.png"):
        data.load("imagefolder", tmp_path)


def test_imagefolder_single_folder_and_computed_normalization(tmp_path: Path) -> None:
    for k, cls in enumerate(["a", "b"]):
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", 50 * k + 10 * i, size=(4, 4))
    train = data.load("imagefolder", tmp_path)
    assert data.class_counts(train).tolist() == [4, 4]
    assert data.class_counts(data.load("imagefolder", tmp_path, "test")).tolist() == [1, 1]
    mean, std = data.normalization("imagefolder", train)
    assert len(mean) == len(std) == 3
    flat = train.images.transpose(0, 1).reshape(3, -1).double()
    assert mean == pytest.approx(flat.mean(dim=1).tolist(), abs=1e-9)
    assert std == pytest.approx(flat.std(dim=1, unbiased=False).tolist(), abs=1e-9)
    assert data.normalization("cifar100", train) == (
        (0.5071, 0.4866, 0.4409),
        (0.2673, 0.2564, 0.2762),
    )
    assert data.normalization("cifar10", train)[1] == (0.2023, 0.1994, 0.2010)


def test_covid_found_in_a_wrapper_folder_but_not_in_the_shared_data_folder(tmp_path: Path) -> None:
    _make_covid(tmp_path / "covid19-cxr" / "COVID-19_Radiography_Dataset")
    assert data.load("covid19-cxr", tmp_path).num_classes == 3
    shared = tmp_path / "shared"
    (shared / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    (shared / "mnist").mkdir()
    with pytest.raises(DdppError, match="no covid19-cxr data found"):
        data.load("covid19-cxr", shared)


def test_shuffled_per_class_is_a_seeded_permutation_of_each_class_in_label_order():
    labels = torch.tensor([2, 0, 1, 0, 2, 0, 1, 2, 2])
    generator = torch.Generator().manual_seed(0)
    shuffled = data.shuffled_per_class(labels, 4, generator)
    assert [sorted(m.tolist()) for m in shuffled] == [[1, 3, 5], [2, 6], [0, 4, 7, 8], []]
    # the draws are exactly randperm per class, in class order, from one generator
    reference = torch.Generator().manual_seed(0)
    expected = [
        torch.tensor([1, 3, 5])[torch.randperm(3, generator=reference)],
        torch.tensor([2, 6])[torch.randperm(2, generator=reference)],
        torch.tensor([0, 4, 7, 8])[torch.randperm(4, generator=reference)],
    ]
    for got, want in zip(shuffled[:3], expected, strict=True):
        assert torch.equal(got, want)
