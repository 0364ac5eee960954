"""The dataset registry: what ddpp knows about each dataset before loading it.

One :class:`DatasetInfo` per dataset, registered once; :func:`available` lists the names and
:func:`info` looks one up (aliases such as ``fashion-mnist`` accepted). Also where datasets live:
the data folder (:func:`default_root`) and the system folders of :data:`SYSTEM_FOLDERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddpp_cli.engine import layout
from ddpp_cli.engine.errors import DdppError

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

    ``channels``/``image_size``/``num_classes``/``class_names`` are None where the data decides
    (image folders); ``mean``/``std`` are None where they are computed from the train split, and
    only there may ``--channels`` differ from ``channels`` (:func:`channel_choices`).
    CIFAR-100 uses its own statistics; MTT's code reused the CIFAR-10 values for it.
    """

    name: str
    channels: int | None
    image_size: tuple[int, int] | None
    num_classes: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    default_zca: bool
    class_names: tuple[str, ...] | None


REGISTRY: dict[str, DatasetInfo] = {
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
        DatasetInfo("imagefolder", None, None, None, None, None, False, None),
        DatasetInfo("mnist", 1, (28, 28), 10, (0.1307,), (0.3081,), False, _MNIST_CLASSES),
        DatasetInfo(
            "svhn", 3, (32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
            False, tuple(str(d) for d in range(10)),
        ),
        DatasetInfo("tinyimagenet", 3, (64, 64), 200, _IMAGENET_MEAN, _IMAGENET_STD, False, None),
    )
}  # fmt: skip
ALIASES = {
    "fashion-mnist": "fashionmnist",
    "fashion_mnist": "fashionmnist",
    "tiny-imagenet": "tinyimagenet",
    "tiny-imagenet-200": "tinyimagenet",
    "covid19": "covid19-cxr",
}
# The torchvision.datasets class that reads each array dataset.
TORCHVISION_CLASSES = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "svhn": "SVHN",
}


def available() -> list[str]:
    """Dataset names accepted by :func:`load` and ``--dataset``."""
    return sorted(REGISTRY)


def canonical(name: str) -> str:
    """The registry key of ``name`` (aliases resolved); DdppError listing the choices."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in REGISTRY:
        raise DdppError(f"unknown dataset '{name}'; choose one of: {', '.join(available())}.")
    return key


def info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (DdppError listing the choices when unknown)."""
    return REGISTRY[canonical(name)]


def default_root() -> Path:
    """Default data folder: ddpp's data home (``layout.data_home()``), sub-folder ``datasets``."""
    return layout.data_home() / layout.DATASETS_DIRNAME


CHANNEL_COUNTS = (1, 3)  # gray, colour


def channel_choices(name: str) -> tuple[int, ...]:
    """The ``--channels`` a dataset accepts: any for data normalised by its own statistics,
    else only its own count (its table's mean and std have one value per channel)."""
    entry = info(name)
    if entry.mean is None and entry.std is None:
        return CHANNEL_COUNTS
    return (entry.channels,) if entry.channels is not None else CHANNEL_COUNTS
