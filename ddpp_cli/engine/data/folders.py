"""Image-folder datasets (tinyimagenet, covid19-cxr, imagefolder) and their on-disk decode cache.

Images are decoded once with PIL and cached under ``<dataset folder>/.ddpp-cache/``
(``layout.CACHE_DIRNAME``), so that later loads are fast; a single folder of class folders is
split 80/20 per class, seeded. A dataset whose registry entry leaves the channels to the data
(``imagefolder``) loads as 1 channel when every image is gray (PIL mode L, I;16 or 1, or RGB
with three equal channels), else as 3; that decision is cached too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import torch

from ddpp_cli.engine import store
from ddpp_cli.engine.data.registry import ALIASES, REGISTRY
from ddpp_cli.engine.data.splits import shuffled_per_class
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.layout import CACHE_DIRNAME

CACHE_FORMAT = "ddpp.cache/1"
CHANNELS_FORMAT = "ddpp.channels/1"
# PIL modes that hold one gray value per pixel (LA: gray with transparency, dropped on load).
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
MODES = {1: "L", 3: "RGB"}  # the PIL mode each channel count is decoded in
TEST_FRACTION = 0.2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FOLDER_CANDIDATES = {
    "tinyimagenet": ("tinyimagenet", "tiny-imagenet-200", "tinyimagenet/tiny-imagenet-200"),
    "covid19-cxr": (
        "covid19-cxr",
        "COVID-19_Radiography_Dataset",
        "covid19-cxr/COVID-19_Radiography_Dataset",
    ),
    "imagefolder": (),
}


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
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                files.append(_annotated_file(annotations, number, parts[0]))
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


def _annotated_file(annotations: Path, number: int, name: str) -> Path:
    """The image a line of ``val_annotations.txt`` names, inside ``images/`` next to it.

    A name that is absolute or climbs out (``../x.JPEG``) is refused before any file is read.
    """
    images = annotations.parent / "images"
    relative = PurePosixPath(name)
    inside = os.path.normpath(relative.as_posix())
    if not name or relative.is_absolute() or inside == ".." or inside.startswith("../"):
        raise DdppError(
            f"{annotations} line {number} names {name!r}, which is outside {images}; each "
            "line must name a file in images/ (fix or replace the file)."
        )
    return images / inside


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
    return any(d.name in REGISTRY or d.name in ALIASES for d in _visible_dirs(folder))


def find_dataset_dir(name: str, root: Path) -> Path:
    """The folder under ``root`` holding image-folder dataset ``name``; DdppError when none."""
    candidates = [root / c for c in FOLDER_CANDIDATES[name]] + [root]
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


def _unreadable(path: Path, exc: Exception) -> DdppError:
    return DdppError(f"cannot read image {path}: {exc}; remove or replace the file.")


def _decode(path: Path, mode: str, size: int | None) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise _unreadable(path, exc) from None
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


def is_gray(path: Path) -> bool:
    """True when the image holds gray only: a gray PIL mode, or colour with equal channels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in GRAY_MODES:
                return True
            red, green, blue = image.convert("RGB").split()
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise _unreadable(path, exc) from None
    return red.tobytes() == green.tobytes() == blue.tobytes()


def _listing_entries(folder: Path, files: Sequence[Path]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of each file: what a cache key depends on."""
    try:
        return [
            (str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns)
            for path, stat in ((path, path.stat()) for path in files)
        ]
    except OSError as exc:
        raise DdppError(f"cannot read the image files under {folder}: {exc}") from None


def decided_channels(folder: Path, files: Sequence[Path]) -> int:
    """1 when every image of ``files`` is gray (:func:`is_gray`), else 3; cached on disk.

    The scan stops at the first colour image; the answer is kept under ``.ddpp-cache/`` keyed
    on the listing (paths, sizes, mtimes), so a folder is scanned again only when it changes.
    """
    listing = json.dumps({"format": CHANNELS_FORMAT, "files": _listing_entries(folder, files)})
    key = hashlib.sha256(listing.encode()).hexdigest()[:32]
    cache = folder / CACHE_DIRNAME / f"channels-{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        recorded = json.loads(cache.read_text(encoding="utf-8"))["channels"]
        if recorded in MODES:
            return recorded
    channels = 1 if all(is_gray(path) for path in files) else 3
    with contextlib.suppress(OSError):  # a read-only data folder just goes without the cache
        store.atomic_write_text(cache, json.dumps({"channels": channels}) + "\n")
    return channels


def _cache_key(
    folder: Path, files: Sequence[Path], labels: Sequence[int], mode: str, size: int | None
) -> str:
    entries = [
        (name, label, size_bytes, mtime)
        for (name, size_bytes, mtime), label in zip(
            _listing_entries(folder, files), labels, strict=True
        )
    ]
    text = json.dumps({"format": CACHE_FORMAT, "mode": mode, "size": size, "files": entries})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _decode_cached(
    folder: Path, files: list[Path], labels: list[int], mode: str, size: int | None
) -> torch.Tensor:
    """``_decode_all`` with an on-disk cache keyed on the listing, mtimes, mode and size."""
    cache = folder / CACHE_DIRNAME / f"{_cache_key(folder, files, labels, mode, size)}.safetensors"
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


def _check_two_classes(folder: Path, classes: tuple[str, ...]) -> None:
    """Refuse a one-class dataset: every accuracy on it would be a meaningless 100 %."""
    if len(classes) < 2:
        raise DdppError(
            f"a dataset needs at least two classes; {folder} has one: {classes[0]} (add a "
            "folder per class)."
        )


def _holdout_indices(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """Boolean test mask: round(20 %) of each class (at least 1 when it has 2+ images), seeded."""
    generator = make_generator(seed, "holdout")
    test = torch.zeros(labels.shape[0], dtype=torch.bool)
    for members in shuffled_per_class(labels, num_classes, generator):
        count = members.numel()
        n_test = min(max(math.floor(TEST_FRACTION * count + 0.5), 1), count - 1)
        test[members[: max(n_test, 0)]] = True
    return test


def _mode(folder: Path, files: Sequence[Path], channels: int | None) -> str:
    """The PIL mode to decode in: ``channels``'s, or the one the images decide."""
    return MODES[channels if channels is not None else decided_channels(folder, files)]


def load_folder_dataset(
    name: str, root: Path, split: str, image_size: int | None, seed: int, channels: int | None
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """One split's uint8 images, labels and class names; ``channels`` None: the registry's
    count, else (``imagefolder``) the one :func:`decided_channels` reads from both splits."""
    folder = find_dataset_dir(name, root)
    entry = REGISTRY[name]
    channels = channels if channels is not None else entry.channels
    default_size = entry.image_size
    size = image_size if image_size is not None else (default_size[0] if default_size else None)

    train_dir = folder / "train"
    if train_dir.is_dir():
        classes, files, labels = _class_folder_listing(train_dir)
        _check_two_classes(train_dir, classes)
        every_file = list(files)
        if split == "test":
            files, labels = _test_listing(_labelled_test_dir(folder, classes), classes)
            every_file += files
        elif channels is None:
            with contextlib.suppress(DdppError):  # without a test split, train alone decides
                every_file += _test_listing(_labelled_test_dir(folder, classes), classes)[0]
        mode = _mode(folder, every_file, channels)
        images = _decode_cached(folder, files, labels, mode, size)
        return images, torch.tensor(labels, dtype=torch.int64), _class_names(folder, classes)

    classes, files, labels = _class_folder_listing(folder)
    _check_two_classes(folder, classes)
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    mode = _mode(folder, files, channels)
    images = _decode_cached(folder, files, labels, mode, size)
    keep = _holdout_indices(label_tensor, len(classes), seed)
    if split == "train":
        keep = ~keep
    return images[keep], label_tensor[keep], classes
