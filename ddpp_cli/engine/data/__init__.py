"""Datasets: every split held as one float32 (N, C, H, W) tensor in [0, 1] + int64 labels.

``load(name, root, split)`` is the one entry point (names from ``available()``). Sources:

- torchvision sets (cifar10, cifar100, mnist, fashionmnist, svhn) under ``root/<name>``, read from
  their ``.data`` arrays in one go (no per-image transforms), downloaded when allowed;
- MNIST and Fashion-MNIST straight from a folder of the four IDX files, gzipped or not (e.g.
  Debian's ``/usr/share/datasets/fashion-mnist``), preferred over torchvision when present; with
  no explicit root, the system folders of :data:`SYSTEM_FOLDERS` are tried before downloading
  (:func:`source_folder` says which folder a load reads);
- image folders (tinyimagenet, covid19-cxr, imagefolder), decoded once with PIL and cached on disk
  under ``<dataset folder>/.ddpp-cache/`` so that later loads are fast; ``imagefolder`` loads as
  1 channel when every image is gray (``channels`` overrides).

Loaded splits are cached in-process; treat their tensors as read-only.

One module per concern: ``registry`` (what ddpp knows about each dataset), ``loading`` (``load``),
``idx``, ``torchvision_sets`` and ``folders`` (the sources), ``splits`` (subsets and statistics).
"""

from ddpp_cli.engine.data.idx import read_idx
from ddpp_cli.engine.data.loading import check_channels, clear_cache, load, source_folder
from ddpp_cli.engine.data.registry import (
    CHANNEL_COUNTS,
    SYSTEM_FOLDERS,
    DatasetInfo,
    available,
    channel_choices,
    default_root,
    info,
)
from ddpp_cli.engine.data.splits import (
    ImageSplit,
    class_counts,
    normalization,
    proportional_quota,
    shuffled_per_class,
    stratified_subset,
)

__all__ = [
    "CHANNEL_COUNTS",
    "SYSTEM_FOLDERS",
    "DatasetInfo",
    "ImageSplit",
    "available",
    "channel_choices",
    "check_channels",
    "class_counts",
    "clear_cache",
    "default_root",
    "info",
    "load",
    "normalization",
    "proportional_quota",
    "read_idx",
    "shuffled_per_class",
    "source_folder",
    "stratified_subset",
]
