"""Dataset registry: every split held as one float32 (N, C, H, W) tensor in [0, 1] + int64 labels.

``load(name, root, split)`` is the one entry point (names from ``available()``). Sources:

- torchvision sets (cifar10, cifar100, mnist, fashionmnist, svhn) under ``root/<name>``, read from
  their ``.data`` arrays in one go (no per-image transforms), downloaded when allowed;
- MNIST and Fashion-MNIST straight from a folder of the four IDX files, gzipped or not (e.g.
  Debian's ``/usr/share/datasets/fashion-mnist``), preferred over torchvision when present; with
  no explicit root, the system folders of :data:`SYSTEM_FOLDERS` are tried before downloading
  (:func:`source_folder` says which folder a load reads);
- image folders (tinyimagenet, covid19-cxr, imagefolder), decoded once with PIL and cached on disk
  under ``<dataset folder>/.ddpp-cache/`` so that later loads are fast.

Loaded splits are cached in-process; treat their tensors as read-only.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch
import torch.nn.functional as F

from ddpp_cli.engine import store
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.errors import DdppError

CACHE_FORMAT = "ddpp.cache/1"
CACHE_DIRNAME = ".ddpp-cache"
SPLITS = ("train", "test")
TEST_FRACTION = 0.2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
_MNIST_CLASSES = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
)  # fmt: skip
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Folders where operating-system packages install datasets (Debian: ``apt-get install
# dataset-fashion-mnist``), tried when no root is given and the data folder lacks the files.
SYSTEM_FOLDERS: dict[str, tuple[Path, ...]] = {
    "fashionmnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "mnist": (Path("/usr/share/datasets/mnist"),),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What ddpp knows about a dataset before loading it.

    ``image_size``/``num_classes``/``class_names`` are None where the data decides (image
    folders); ``mean``/``std`` are None where they are computed from the train split.
    CIFAR-100 uses its own statistics; MTT's code reused the CIFAR-10 values for it.
    """

    name: str
    channels: int
    image_size: tuple[int, int] | None
    num_classes: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    default_zca: bool
    class_names: tuple[str, ...] | None


_REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "cifar10", 3, (32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
            True, _CIFAR10_CLASSES,
        ),
        DatasetInfo(
            "cifar100", 3, (32, 32), 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
            True, _CIFAR100_CLASSES,
        ),
        DatasetInfo("covid19-cxr", 1, (112, 112), None, None, None, False, None),
        DatasetInfo(
            "fashionmnist", 1, (28, 28), 10, (0.2861,), (0.3530,), False, _FASHION_CLASSES
        ),
        DatasetInfo("imagefolder", 3, None, None, None, None, False, None),
        DatasetInfo("mnist", 1, (28, 28), 10, (0.1307,), (0.3081,), False, _MNIST_CLASSES),
        DatasetInfo(
            "svhn", 3, (32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
            False, tuple(str(d) for d in range(10)),
        ),
        DatasetInfo("tinyimagenet", 3, (64, 64), 200, _IMAGENET_MEAN, _IMAGENET_STD, False, None),
    )
}  # fmt: skip
_ALIASES = {
    "fashion-mnist": "fashionmnist",
    "fashion_mnist": "fashionmnist",
    "tiny-imagenet": "tinyimagenet",
    "tiny-imagenet-200": "tinyimagenet",
    "covid19": "covid19-cxr",
}
_TORCHVISION = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "svhn": "SVHN",
}
_EXPECTED_FILES = {
    "cifar10": "cifar-10-python.tar.gz or its extracted folder cifar-10-batches-py/ "
    "(data_batch_1 … data_batch_5, test_batch, batches.meta)",
    "cifar100": "cifar-100-python.tar.gz or its extracted folder cifar-100-python/ "
    "(train, test, meta)",
    "svhn": "train_32x32.mat and test_32x32.mat",
}
_FOLDER_CANDIDATES = {
    "tinyimagenet": ("tinyimagenet", "tiny-imagenet-200", "tinyimagenet/tiny-imagenet-200"),
    "covid19-cxr": (
        "covid19-cxr",
        "COVID-19_Radiography_Dataset",
        "covid19-cxr/COVID-19_Radiography_Dataset",
    ),
    "imagefolder": (),
}
_GRAYSCALE_FOLDERS = {"covid19-cxr"}


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split: (N, C, H, W) float32 images in [0, 1], (N,) int64 labels, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise ValueError("ImageSplit needs (N, C, H, W) images and (N,) labels")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError("ImageSplit images and labels differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def available() -> list[str]:
    """Dataset names accepted by :func:`load` and ``--dataset``."""
    return sorted(_REGISTRY)


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise DdppError(f"unknown dataset '{name}'; choose one of: {', '.join(available())}.")
    return key


def info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (DdppError listing the choices when unknown)."""
    return _REGISTRY[_canonical(name)]


def default_root() -> Path:
    """Default data folder: platformdirs' user data dir for ddpp, sub-folder ``datasets``."""
    return platformdirs.user_data_path("ddpp") / "datasets"


def load(
    name: str,
    root: Path | None = None,
    split: str = "train",
    *,
    download: bool = True,
    image_size: int | None = None,
    seed: int = 0,
) -> ImageSplit:
    """Load one split of a dataset as an :class:`ImageSplit` (cached in-process).

    ``image_size`` resizes to a square; folder sets without it must have equal-sized images
    (covid19-cxr defaults to 112, tinyimagenet to 64). ``seed`` fixes the stratified 80/20
    train/test split of single-folder datasets.
    """
    key = _canonical(name)
    if split not in SPLITS:
        raise DdppError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}.")
    if image_size is not None and image_size < 1:
        raise DdppError(f"--image-size must be a positive number of pixels, got {image_size}.")
    base = _base_folder(key, root, split)
    return _load_cached(key, base, split, bool(download), image_size, int(seed))


def _base_folder(name: str, root: Path | None, split: str = "train") -> Path:
    """The root a load uses: ``root``, else the data folder, else a system folder holding it."""
    if root is not None:
        return Path(root).expanduser().resolve()
    base = default_root()
    if name in SYSTEM_FOLDERS and _find_idx_pair(name, base, split) is None:
        for folder in SYSTEM_FOLDERS[name]:
            if _find_idx_pair(name, folder, split) is not None:
                return folder
    return base


def source_folder(name: str, root: Path | None = None, split: str = "train") -> Path:
    """The folder :func:`load` reads ``name`` from (or would download into), without loading.

    For MNIST-style sets this is the folder holding the IDX files when present, so a user can
    see whether the data folder, ``--data-dir`` or a system folder (Debian's) was used.
    """
    key = _canonical(name)
    base = _base_folder(key, root, split)
    if key in _FOLDER_CANDIDATES:
        with contextlib.suppress(DdppError):
            return _find_dataset_dir(key, base)
        return base
    if key in ("mnist", "fashionmnist"):
        found = _find_idx_pair(key, base, split)
        if found is not None:
            return found[0].parent
    return base / key


def clear_cache() -> None:
    """Forget the splits cached in-process (the on-disk folder cache is kept)."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(
    name: str, root: Path, split: str, download: bool, image_size: int | None, seed: int
) -> ImageSplit:
    if name in _FOLDER_CANDIDATES:
        images, labels, classes = _load_folder_dataset(name, root, split, image_size, seed)
    else:
        images, labels, classes = _load_array_dataset(name, root, split, download)
        if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
            return ImageSplit(_resize(_to_float(images), image_size), labels, classes)
    return ImageSplit(_to_float(images), labels, classes)


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)


def _resize(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear (antialiased) resize of float images to size×size, in chunks."""
    parts = [
        F.interpolate(
            images[i : i + chunk], size=(size, size), mode="bilinear", antialias=True
        ).clamp_(0.0, 1.0)
        for i in range(0, images.shape[0], chunk)
    ]
    return torch.cat(parts)


# ----------------------------------------------------------------------------------- IDX files


def read_idx(path: Path) -> torch.Tensor:
    """Parse an IDX file of unsigned bytes (gzipped or not) into a uint8 tensor."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DdppError(
            f"{path} cannot be read ({exc}); the file is damaged, download it again."
        ) from None
    if len(data) < 4:
        raise DdppError(f"{path} is truncated: it has no complete IDX header; download it again.")
    zero_a, zero_b, dtype, ndim = data[:4]
    if zero_a or zero_b or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DdppError(
            f"{path} is not an IDX file of unsigned bytes (magic number "
            f"{data[:4].hex()}, expected 000008 followed by 01–04)."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DdppError(f"{path} is truncated inside its IDX header; download it again.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    found = len(data) - header
    if found != expected:
        problem = "is truncated" if found < expected else "has trailing bytes"
        raise DdppError(
            f"{path} {problem}: its header promises {expected} bytes of shape "
            f"{'×'.join(map(str, dims))}, but {found} follow; download it again."
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _idx_names(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _idx_folders(name: str, root: Path) -> list[Path]:
    cls = _TORCHVISION[name]
    folders = [root, root / name, root / cls / "raw", root / name / cls / "raw"]
    if name == "fashionmnist":
        folders.insert(2, root / "fashion-mnist")
    return folders


def _find_idx_file(folder: Path, base: str) -> Path | None:
    dotted = base.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for candidate in (base, f"{base}.gz", dotted, f"{dotted}.gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _find_idx_pair(name: str, root: Path, split: str) -> tuple[Path, Path] | None:
    """(images file, labels file) in the first candidate folder under ``root`` holding both."""
    image_base, label_base = _idx_names(split)
    for folder in _idx_folders(name, root):
        image_file = _find_idx_file(folder, image_base)
        label_file = _find_idx_file(folder, label_base)
        if image_file is not None and label_file is not None:
            return image_file, label_file
    return None


def _load_idx(name: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(uint8 images (N, 1, H, W), int64 labels) from the first folder holding the IDX pair."""
    found = _find_idx_pair(name, root, split)
    if found is not None:
        image_file, label_file = found
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1:
            raise DdppError(
                f"{image_file} / {label_file}: expected images (N, H, W) and labels (N,), got "
                f"shapes {tuple(images.shape)} and {tuple(labels.shape)}."
            )
        if images.shape[0] != labels.shape[0]:
            raise DdppError(
                f"{image_file} has {images.shape[0]} images but {label_file} has "
                f"{labels.shape[0]} labels; the files do not belong together."
            )
        if labels.numel() and int(labels.max()) >= 10:
            raise DdppError(f"{label_file} has labels above 9; it is not an MNIST-style file.")
        return images.unsqueeze(1), labels.to(torch.int64)
    return None


# --------------------------------------------------------------------------- torchvision sets


def _missing_message(name: str, root: Path, split: str, download: bool, exc: Exception) -> str:
    if name in ("mnist", "fashionmnist"):
        image_base, label_base = _idx_names(split)
        files = f"the IDX files {image_base}[.gz] and {label_base}[.gz]"
        where = "one of " + ", ".join(str(f) for f in _idx_folders(name, root))
        if root == default_root():
            where += " (or " + ", ".join(str(f) for f in SYSTEM_FOLDERS[name])
            where += ", from Debian's dataset-fashion-mnist)" if name == "fashionmnist" else ")"
    else:
        files = _EXPECTED_FILES[name]
        where = str(root / name)
    if download:
        reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        return (
            f"could not download {name} ({reason}); expected {files} in {where}. Check the "
            "network, or fetch the files yourself and pass --data-dir."
        )
    return (
        f"{name} {split} data not found: expected {files} in {where}. Pass --data-dir pointing "
        "to a folder that has them, or use --download (needs network access)."
    )


def _load_array_dataset(
    name: str, root: Path, split: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """uint8 (N, C, H, W) images, int64 labels and class names of a torchvision dataset."""
    table = _REGISTRY[name].class_names or ()
    if name in ("mnist", "fashionmnist"):
        found = _load_idx(name, root, split)
        if found is not None:
            return found[0], found[1], table
    import torchvision.datasets

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    kwargs = {"split": split} if name == "svhn" else {"train": split == "train"}
    try:
        with (
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            dataset = cls(str(root / name), download=download, **kwargs)
    except ImportError as exc:
        hint = "pip install 'ddpp[svhn]'" if name == "svhn" else "install it"
        raise DdppError(f"reading {name} needs an extra package ({exc}); {hint}.") from None
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise DdppError(_missing_message(name, root, split, download, exc)) from None

    data = dataset.data
    images = data if isinstance(data, torch.Tensor) else torch.from_numpy(data)
    if images.ndim == 3:  # MNIST-style (N, H, W)
        images = images.unsqueeze(1)
    elif name != "svhn":  # CIFAR stores (N, H, W, C); SVHN is already (N, C, H, W)
        images = images.permute(0, 3, 1, 2)
    targets = dataset.labels if name == "svhn" else dataset.targets
    labels = torch.as_tensor(targets, dtype=torch.int64)
    classes = tuple(getattr(dataset, "classes", None) or table)
    return images.contiguous(), labels, classes


# ------------------------------------------------------------------------------- image folders


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    """Image files under a class folder (recursively), skipping hidden and ``*mask*`` folders."""
    files: list[Path] = []
    for current, dirs, names in os.walk(class_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and "mask" not in d.lower())
        files.extend(
            Path(current) / n
            for n in sorted(names)
            if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
        )
    return files


def _class_folder_listing(folder: Path) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """Classes (sorted folder names), files and labels of a folder of class folders."""
    class_dirs = _visible_dirs(folder)
    if not class_dirs:
        raise DdppError(f"{folder} has no class folders; expected one sub-folder per class.")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        found = _image_files(class_dir)
        if not found:
            raise DdppError(
                f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "remove it or add images."
            )
        files.extend(found)
        labels.extend([label] * len(found))
    return tuple(d.name for d in class_dirs), files, labels


def _test_listing(folder: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    """Files/labels of a test (or val) folder, using the train split's class indices."""
    index = {c: i for i, c in enumerate(classes)}
    annotations = folder / "val_annotations.txt"
    if _is_tiny_imagenet_val(folder):
        files, labels = [], []
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                files.append(folder / "images" / parts[0])
                labels.append(index[parts[1]])
        if not files:
            raise DdppError(f"{annotations} names none of the {len(classes)} train classes.")
        return files, labels
    test_classes, files, local = _class_folder_listing(folder)
    unknown = [c for c in test_classes if c not in index]
    if unknown:
        raise DdppError(
            f"{folder} has class folders that train/ lacks: {', '.join(unknown[:5])}; the test "
            "classes must be a subset of the train classes."
        )
    return files, [index[test_classes[i]] for i in local]


def _is_tiny_imagenet_val(folder: Path) -> bool:
    """Tiny ImageNet's official ``val/``: ``images/`` plus ``val_annotations.txt``."""
    return (folder / "val_annotations.txt").is_file() and (folder / "images").is_dir()


def _labelled_test_dir(folder: Path, classes: tuple[str, ...]) -> Path:
    """The labelled held-out split next to ``train/``: ``test/``, else ``val/``.

    In Tiny ImageNet's official archive ``test/images/`` has no labels; its labelled ``val/`` is
    the test split (as in MTT and the papers), so an annotated ``val/`` wins over ``test/``, and
    a folder holding nothing but an ``images/`` folder of files is taken as unlabelled. MTT's
    rearranged ``val/images/<wnid>/`` (class folders under ``images/``) works too.
    """
    val_images = folder / "val" / "images"
    if val_images.is_dir() and _visible_dirs(val_images):
        return val_images
    if _is_tiny_imagenet_val(folder / "val"):
        return folder / "val"
    for name in ("test", "val"):
        candidate = folder / name
        if not candidate.is_dir():
            continue
        inner = [d.name for d in _visible_dirs(candidate)]
        if inner == ["images"] and "images" not in classes:
            continue  # Tiny ImageNet's unlabelled test/images/
        return candidate
    raise DdppError(
        f"{folder} has train/ but no labelled test/ or val/ folder; add one with the same "
        "class folders."
    )


def _class_names(folder: Path, classes: tuple[str, ...]) -> tuple[str, ...]:
    """Readable class names: Tiny ImageNet's ``words.txt`` (wnid TAB names) when present.

    The first name before the comma is used ("n01443537" → "goldfish"); a name two classes
    share gets its wnid appended. Without ``words.txt`` the folder names are the names.
    """
    words = folder / "words.txt"
    if not words.is_file():
        return classes
    try:
        lines = words.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DdppError(f"cannot read {words}: {exc}; fix or remove it.") from None
    table = {}
    for line in lines:
        wnid, _, names = line.partition("\t")
        if names.strip():
            table[wnid.strip()] = names.split(",")[0].strip()
    names = [table.get(c, c) for c in classes]
    counts = {name: names.count(name) for name in names}
    return tuple(
        f"{name} ({wnid})" if counts[name] > 1 and name != wnid else name
        for name, wnid in zip(names, classes, strict=True)
    )


def _is_shared_data_folder(folder: Path) -> bool:
    """True for a data root holding other datasets (cifar10/, mnist/, …), not class folders."""
    return any(d.name in _REGISTRY or d.name in _ALIASES for d in _visible_dirs(folder))


def _find_dataset_dir(name: str, root: Path) -> Path:
    candidates = [root / c for c in _FOLDER_CANDIDATES[name]] + [root]
    for candidate in candidates:
        if not candidate.is_dir() or not _visible_dirs(candidate):
            continue
        if candidate == root and name != "imagefolder" and _is_shared_data_folder(root):
            continue
        folder = candidate
        # Descend through wrapper folders (e.g. an extracted archive's top-level folder).
        while not (folder / "train").is_dir():
            subdirs = _visible_dirs(folder)
            if len(subdirs) != 1 or not _visible_dirs(subdirs[0]):
                break
            folder = subdirs[0]
        return folder
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    if name == "tinyimagenet":
        layout = (
            "the official tiny-imagenet-200 layout (train/<wnid>/images/, val/images/ with "
            "val_annotations.txt) or train/<class>/… and val/<class>/… folders"
        )
    elif name == "covid19-cxr":
        layout = "one folder per class (the COVID-19 Radiography Database layout)"
    else:
        layout = "train/ and test/ (or val/) class folders, or a single folder of class folders"
    raise DdppError(
        f"no {name} data found: expected {layout} in {tried}. Pass --data-dir pointing to it "
        "(this dataset cannot be downloaded automatically)."
    )


def _decode(path: Path, mode: str, size: int | None) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DdppError(f"cannot read image {path}: {exc}; remove or replace the file.") from None
    if size is not None and image.size != (size, size):
        image = TF.resize(image, [size, size])
    return TF.pil_to_tensor(image)


def _decode_all(files: Sequence[Path], mode: str, size: int | None) -> torch.Tensor:
    """Decode images to one uint8 (N, C, H, W) tensor (threads; PIL releases the GIL)."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        tensors = list(pool.map(lambda p: _decode(p, mode, size), files))
    first = tensors[0].shape
    for path, tensor in zip(files, tensors, strict=True):
        if tensor.shape != first:
            raise DdppError(
                f"images differ in size: {files[0]} is {first[2]}×{first[1]} but {path} is "
                f"{tensor.shape[2]}×{tensor.shape[1]}; pass --image-size to resize them."
            )
    return torch.stack(tensors)


def _cache_key(
    folder: Path, files: Sequence[Path], labels: Sequence[int], mode: str, size: int | None
) -> str:
    entries = []
    for path, label in zip(files, labels, strict=True):
        stat = path.stat()
        entries.append((str(path.relative_to(folder)), label, stat.st_size, stat.st_mtime_ns))
    text = json.dumps({"format": CACHE_FORMAT, "mode": mode, "size": size, "files": entries})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _decode_cached(
    folder: Path, files: list[Path], labels: list[int], mode: str, size: int | None
) -> torch.Tensor:
    """``_decode_all`` with an on-disk cache keyed on the listing, mtimes, mode and size."""
    try:
        cache = (
            folder / CACHE_DIRNAME / f"{_cache_key(folder, files, labels, mode, size)}.safetensors"
        )
    except OSError as exc:
        raise DdppError(f"cannot read the image files under {folder}: {exc}") from None
    if cache.is_file():
        try:
            images = store.read(cache, CACHE_FORMAT).tensors["images"]
            if images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(files):
                return images
        except (DdppError, KeyError):
            pass  # a damaged cache is rebuilt below
    images = _decode_all(files, mode, size)
    with contextlib.suppress(OSError):  # a read-only data folder just goes without the cache
        store.write(cache, {"images": images}, CACHE_FORMAT, {"mode": mode, "size": size})
    return images


def _holdout_indices(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """Boolean test mask: round(20 %) of each class (at least 1 when it has 2+ images), seeded."""
    generator = make_generator(seed, "holdout")
    test = torch.zeros(labels.shape[0], dtype=torch.bool)
    for members in shuffled_per_class(labels, num_classes, generator):
        count = members.numel()
        n_test = min(max(math.floor(TEST_FRACTION * count + 0.5), 1), count - 1)
        test[members[: max(n_test, 0)]] = True
    return test


def _load_folder_dataset(
    name: str, root: Path, split: str, image_size: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    folder = _find_dataset_dir(name, root)
    mode = "L" if name in _GRAYSCALE_FOLDERS else "RGB"
    default_size = _REGISTRY[name].image_size
    size = image_size if image_size is not None else (default_size[0] if default_size else None)

    train_dir = folder / "train"
    if train_dir.is_dir():
        classes, files, labels = _class_folder_listing(train_dir)
        if split == "test":
            files, labels = _test_listing(_labelled_test_dir(folder, classes), classes)
        images = _decode_cached(folder, files, labels, mode, size)
        return images, torch.tensor(labels, dtype=torch.int64), _class_names(folder, classes)

    classes, files, labels = _class_folder_listing(folder)
    if len(classes) < 2:
        raise DdppError(f"{folder} has only one class folder ({classes[0]}); need at least two.")
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    images = _decode_cached(folder, files, labels, mode, size)
    keep = _holdout_indices(label_tensor, len(classes), seed)
    if split == "train":
        keep = ~keep
    return images[keep], label_tensor[keep], classes


# --------------------------------------------------------------------------- subsets and stats


def _allocate(counts: Sequence[int], n: int) -> list[int]:
    """Split ``n`` over classes proportionally to ``counts`` (largest remainder), ≥ 1 each if
    possible, never more than a class has."""
    total = sum(counts)
    exact = [n * c / total for c in counts]
    quota = [math.floor(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda k: (quota[k] - exact[k], k))
    for k in order[: n - sum(quota)]:
        quota[k] += 1
    present = [k for k, c in enumerate(counts) if c > 0]
    if n >= len(present):
        for k in present:
            if quota[k] == 0:
                donor = max(range(len(quota)), key=lambda j: (quota[j], -j))
                quota[donor] -= 1
                quota[k] += 1
    return quota


def stratified_subset(split: ImageSplit, n: int, seed: int) -> ImageSplit:
    """A seeded random subset of ``n`` images with class proportions kept (original order)."""
    if n < 1:
        raise DdppError(f"a subset needs at least 1 image, got {n}.")
    if n >= len(split):
        return split
    counts = class_counts(split).tolist()
    generator = make_generator(seed, "stratified_subset")
    shuffled = shuffled_per_class(split.labels, split.num_classes, generator)
    chosen = [members[:take] for members, take in zip(shuffled, _allocate(counts, n), strict=True)]
    index = torch.cat(chosen).sort().values
    return ImageSplit(split.images[index], split.labels[index], split.class_names)


def shuffled_per_class(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """For each class in label order, the indices of its members in a seeded random order.

    The one per-class draw behind every stratified choice (holdout, subsets, coresets, the
    validation split, real-image initialisation): taking the first k of each list picks k images
    per class. The generator is advanced class by class, so the same seed gives the same picks.
    """
    shuffled = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        shuffled.append(members[torch.randperm(members.numel(), generator=generator)])
    return shuffled


def class_counts(split: ImageSplit) -> torch.Tensor:
    """Images per class, (num_classes,) int64."""
    return torch.bincount(split.labels, minlength=split.num_classes)


def normalization(name: str, train: ImageSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std): the table values, or computed from ``train`` for image folders."""
    entry = info(name)
    if entry.mean is not None and entry.std is not None:
        return entry.mean, entry.std
    channels = train.images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(train), 4096):
        part = train.images[start : start + 4096].to(torch.float64).transpose(0, 1)
        part = part.reshape(channels, -1)
        total += part.sum(dim=1)
        squares += part.square().sum(dim=1)
    count = train.images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
