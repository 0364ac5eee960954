"""A buffer folder's files: the expert files, the manifest ``buffer.json`` read into a
:class:`BufferManifest` (and written back), and one expert's :class:`Trajectory`.

A buffer folder holds ``buffer.json`` (settings, layout, data description), ``zca.safetensors``
when ZCA is on, and one ``expert_NNNN.safetensors`` per expert (names from :mod:`layout`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpp_cli import __version__
from ddpp_cli.engine import store
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.functional import ParamLayout
from ddpp_cli.engine.layout import BUFFERS_DIRNAME, MANIFEST_NAME, data_home
from ddpp_cli.engine.preprocess import Normalization, PreparedData, recorded_normalization

MANIFEST_FORMAT = "ddpp.buffer/1"
_EXPERT_PATTERN = re.compile(r"^expert_(\d{4,})\.safetensors$")


def default_buffer_dir(dataset: str, arch: str, use_zca: bool) -> Path:
    """Where buffers live by default: the data home's buffers folder, one sub-folder per setting."""
    name = f"{dataset}-{arch}" + ("-zca" if use_zca else "")
    return data_home() / BUFFERS_DIRNAME / name


def expert_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"expert_{index:04d}.safetensors"


def expert_files(folder: Path) -> dict[int, Path]:
    """The expert files present in ``folder``, by index."""
    found = {}
    for path in Path(folder).glob("expert_*.safetensors"):
        match = _EXPERT_PATTERN.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class DataDescription:
    """The data the experts saw, as the manifest describes it (None: not recorded)."""

    channels: int | None = None
    image_size: tuple[int, ...] | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    train_size: int | None = None
    test_size: int | None = None
    source: str | None = None  # the folder of a user's folder dataset


@dataclass(frozen=True)
class ExpertEntry:
    """One expert as the manifest lists it."""

    index: int
    file: str
    final_test_accuracy: float | None


@dataclass(frozen=True)
class BufferManifest:
    """A buffer's ``buffer.json``, checked key by key (:func:`read_manifest`).

    ``config`` is the training settings as recorded (compared whole with
    :meth:`BufferConfig.identity` and copied into later files); the attributes below it are
    the settings other stages read. ``raw`` is the JSON as read, for writing it back.
    """

    path: Path
    dataset: str
    arch: str
    config: dict[str, Any]
    epochs: int | None  # None only in a manifest ddpp did not write
    preprocessing: dict[str, Any]  # Preprocessing.describe(): recorded into later files
    data: DataDescription
    experts: tuple[ExpertEntry, ...]
    param_layout: ParamLayout | None
    planned_experts: int | None  # how many it is being made to have (None: not recorded)
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def preprocessing_kind(self) -> str | None:
        """``"zca"`` or ``"normalize"`` (None when not recorded)."""
        return self.preprocessing.get("kind")

    @property
    def is_zca(self) -> bool:
        return self.preprocessing_kind == "zca"

    @property
    def normalization(self) -> Normalization | None:
        """The recorded mean/std the experts' data was normalised with (None for ZCA or when
        none is recorded); DdppError when it is unusable."""
        try:
            return recorded_normalization(self.preprocessing)
        except DdppError:
            raise _malformed(self.path, "preprocessing", "has no usable mean and std") from None

    @property
    def source(self) -> str | None:
        """The folder a user's folder dataset was read from (None for a named dataset)."""
        return self.data.source

    @property
    def image_size(self) -> int | None:
        """``--image-size`` of the experts' data (None: the dataset's own size)."""
        return self.config.get("image_size")

    @property
    def seed(self) -> int:
        """The seed the data was drawn with (its subsets): 0 when none is recorded."""
        return int(self.config.get("seed") or 0)

    @property
    def train_subset(self) -> int | None:
        return self.config.get("train_subset")

    @property
    def lr(self) -> float | None:
        """The experts' learning rate (None: not recorded, e.g. an MTT import)."""
        return self.config.get("lr")

    @property
    def batch_size(self) -> int | None:
        """The experts' batch size (None: not recorded, e.g. an MTT import)."""
        return self.config.get("batch_size")

    @property
    def layout(self) -> ParamLayout:
        """The experts' parameter layout; DdppError when the manifest records none."""
        if self.param_layout is None:
            raise _malformed(self.path, "layout", "is missing")
        return self.param_layout

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)


def _malformed(path: Path, key: str, problem: str) -> DdppError:
    return store.unusable(path, "buffer manifest", key, problem, "remake the buffer")


_PATH = store.optional((lambda v: isinstance(v, str), "must be a path"))
# What each checked key of "config" and "data" must hold.
_CONFIG_KEYS = {
    "image_size": store.optional(store.INT),
    "channels": store.optional(store.INT),
    "seed": store.optional(store.INT),
    "train_subset": store.optional(store.INT),
    "batch_size": store.optional(store.INT),
    "lr": store.optional(store.NUMBER),
    "zca": store.optional((lambda v: isinstance(v, bool), "must be true, false")),
    "imported_from": _PATH,
}
_DATA_KEYS = {
    "channels": store.optional(store.INT),
    "image_size": store.optional(store.INTS),
    "num_classes": store.optional(store.INT),
    "class_names": store.optional(store.NAMES),
    "train_size": store.optional(store.INT),
    "test_size": store.optional(store.INT),
    "source": _PATH,
}


def _checked(path: Path, name: str, table: dict[str, Any], value: Any) -> dict[str, Any]:
    """``value`` (an optional JSON object) with each key of ``table`` it holds checked."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed(path, name, "must be an object")
    store.check_keys(
        path, value, table, what="buffer manifest", remedy="remake the buffer", prefix=f"{name}."
    )
    return value


def _expert_entries(path: Path, value: Any) -> tuple[ExpertEntry, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _malformed(path, "experts", "must be a list")
    entries = []
    for entry in value:
        if not (
            isinstance(entry, dict)
            and store.is_int(entry.get("index"))
            and isinstance(entry.get("file"), str)
            and (
                entry.get("final_test_accuracy") is None
                or store.is_number(entry.get("final_test_accuracy"))
            )
        ):
            raise _malformed(
                path, "experts", f"must list {{index, file, final_test_accuracy}} (got {entry!r})"
            )
        entries.append(ExpertEntry(entry["index"], entry["file"], entry["final_test_accuracy"]))
    return tuple(entries)


def _param_layout(path: Path, value: Any) -> ParamLayout | None:
    if value is None:
        return None
    try:
        return ParamLayout.from_json(value)
    except DdppError:
        raise _malformed(path, "layout", "must be a list of [name, [dim, ...]] pairs") from None


def parse_manifest(path: Path, content: Any) -> BufferManifest:
    """The :class:`BufferManifest` of ``content`` (``path``'s JSON); DdppError naming the file
    and the first malformed key."""
    if not isinstance(content, dict) or content.get("format") != MANIFEST_FORMAT:
        raise DdppError(f"{path} is not a {MANIFEST_FORMAT} manifest.")
    for key in ("dataset", "arch"):
        if not isinstance(content.get(key), str):
            raise _malformed(path, key, f"must be a name (got {content.get(key)!r})")
    epochs = content.get("epochs")
    if epochs is not None and not (store.is_int(epochs) and epochs >= 0):
        raise _malformed(path, "epochs", f"must be a whole number of epochs (got {epochs!r})")
    config = _checked(path, "config", _CONFIG_KEYS, content.get("config"))
    preprocessing = _checked(path, "preprocessing", {}, content.get("preprocessing"))
    kind = preprocessing.get("kind")
    if kind is not None and kind not in ("zca", "normalize"):
        raise _malformed(path, "preprocessing.kind", f"must be zca or normalize (got {kind!r})")
    data = _checked(path, "data", _DATA_KEYS, content.get("data"))
    image_size, names = data.get("image_size"), data.get("class_names")
    return BufferManifest(
        path=path,
        dataset=content["dataset"],
        arch=content["arch"],
        config=config,
        epochs=epochs,
        preprocessing=preprocessing,
        data=DataDescription(
            channels=data.get("channels"),
            image_size=None if image_size is None else tuple(image_size),
            num_classes=data.get("num_classes"),
            class_names=None if names is None else tuple(names),
            train_size=data.get("train_size"),
            test_size=data.get("test_size"),
            source=data.get("source"),
        ),
        experts=_expert_entries(path, content.get("experts")),
        param_layout=_param_layout(path, content.get("layout")),
        planned_experts=_planned(path, content.get("planned_experts")),
        raw=content,
    )


def _planned(path: Path, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _malformed(path, "planned_experts", f"must be a whole number ≥ 1 (got {value!r})")
    return value


def read_manifest(folder: Path) -> BufferManifest:
    """The ``buffer.json`` of ``folder``, checked, or a DdppError saying how to make one."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise DdppError(
            f"{folder} is not a ddpp buffer (no {MANIFEST_NAME}); create one with 'ddpp buffer'."
        )
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DdppError(f"{path} is not readable JSON ({exc}).") from None
    return parse_manifest(path, content)


def data_description(prepared: PreparedData) -> dict[str, Any]:
    """The manifest's ``data``: what the experts were trained on."""
    return {
        "channels": prepared.channels,
        "image_size": list(prepared.image_size),
        "num_classes": prepared.num_classes,
        "class_names": list(prepared.train.class_names),
        "train_size": len(prepared.train.labels),
        "test_size": len(prepared.test.labels),
    }


def write_manifest(folder: Path, manifest: dict[str, Any], *, planned: int | None = None) -> Path:
    """Write ``manifest`` (the JSON being built) as ``folder``'s ``buffer.json``, listing the
    expert files present and, when given, how many experts the buffer is being made to have
    (``planned_experts``: fewer files than that is a buffer whose training stopped); atomic;
    returns its path."""
    records = []
    for index, path in expert_files(folder).items():
        accuracies = expert_metadata(path).get("test_accuracy") or []
        records.append(
            {
                "index": index,
                "file": path.name,
                "final_test_accuracy": accuracies[-1] if accuracies else None,
            }
        )
    manifest = {**manifest, "experts": records, "ddpp_version": __version__}
    if planned is not None:
        manifest["planned_experts"] = planned
    path = Path(folder) / MANIFEST_NAME
    store.atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------- experts


_EXPERT_REMEDY = "remove it and rerun"
# What an expert file's metadata holds (buffer training and the MTT import write it).
_EXPERT_KEYS: dict[str, store.Check] = {
    "dataset": store.optional(store.TEXT),
    "arch": store.optional(store.TEXT),
    "expert": store.optional(store.INT),
    "seed": store.optional(store.INT),
    "config": store.optional(store.OBJECT),
    "preprocessing": store.optional(store.OBJECT),
    "data": store.optional(store.OBJECT),
    "test_accuracy": store.optional(store.NUMBERS),
    "train_loss": store.optional(store.NUMBERS),
    "source": store.optional(store.OBJECT),
}


def check_expert_metadata(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` (of the expert file ``path``) when each key it holds has its type and its
    ``layout`` (when recorded) is readable; else a one-line DdppError naming file and key."""
    store.check_keys(path, metadata, _EXPERT_KEYS, what="expert file", remedy=_EXPERT_REMEDY)
    if metadata.get("layout") is not None:
        try:
            ParamLayout.from_json(metadata["layout"])
        except DdppError:
            raise store.unusable(
                path, "expert file", "layout", "must be a list of [name, [dim, ...]] pairs",
                _EXPERT_REMEDY,
            ) from None  # fmt: skip
    return metadata


def expert_metadata(path: Path) -> dict[str, Any]:
    """The checked metadata of the expert file ``path`` (:func:`check_expert_metadata`)."""
    return check_expert_metadata(path, store.read_metadata(path))


@dataclass(frozen=True)
class Trajectory:
    """One expert: its parameters at init and after every epoch, ``params[e]`` of shape (P,)."""

    params: torch.Tensor
    metadata: dict[str, Any]

    @property
    def epochs(self) -> int:
        return int(self.params.shape[0]) - 1


def load_trajectory(path: Path, layout: ParamLayout | None = None) -> Trajectory:
    """Read one expert file, checking its format and (optionally) its parameter layout."""
    stored = store.read(path, store.TRAJECTORY_FORMAT)
    params = store.require_tensor(stored, "params", ndim=2)
    if layout is not None and params.shape[1] != layout.numel:
        raise DdppError(
            f"{path} holds {params.shape[1]} parameters per snapshot, but the architecture "
            f"needs {layout.numel}; it belongs to another architecture or dataset."
        )
    return Trajectory(params=params, metadata=check_expert_metadata(path, stored.metadata))


def check_expert_file(path: Path, epochs: int, numel: int) -> None:
    """Cheap validity check of an existing expert file (header, format, metadata and tensor
    shape)."""
    shape = store.read_shapes(path, store.TRAJECTORY_FORMAT).get("params", ())
    check_expert_metadata(path, store.read_metadata(path))
    if shape != (epochs + 1, numel):
        raise DdppError(
            f"{path} holds a trajectory of shape {shape}, expected {(epochs + 1, numel)}; "
            "remove it and rerun."
        )
