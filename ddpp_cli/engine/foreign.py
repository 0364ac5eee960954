"""Distilled sets made by other tools, loaded safely into a :class:`DistilledSet`.

Two layouts are read, both written by ``torch.save`` (a pickle); which tool used which mean/std
is in the registry of :mod:`ddpp_cli.engine.foreign_tools`:

- MTT (Cazenavette et al., ``distill.py``): ``images_best.pt`` (a ``(N, C, H, W)`` tensor in
  model-input space, ZCA-whitened when MTT ran with ``--zca``), ``labels_best.pt`` (``(N,)`` hard
  labels, or DATM's/PAD's learned float ``(N, K)`` logits, kept as soft-CE targets at
  temperature 1 with their argmax as the hard labels) and, where a tool saved one (MTT's
  ``distill.py`` does not), ``lr_best.pt`` (the learned step size, a one-element tensor or a
  float). MTT's files do not say whether ZCA was
  on: the caller says so through the ``preprocessing`` of the :class:`ImportTarget`. Without
  ZCA, MTT normalised CIFAR-100 with CIFAR-10's mean/std.
- DC/DSA/DM (VICO-UoE/DatasetCondensation ``main.py``/``main_DM.py``) and CAFE (its
  ``distill.py``): ``res_*.pt``, a dict ``{'data': [[images, labels], ...], 'accs_all_exps':
  {...}}`` with one ``[images, labels]`` pair per experiment; ``experiment`` picks one (default
  0). DC's images are normalised with ddpp's table values; CAFE's are too, except CIFAR-100,
  which CAFE normalised with CIFAR-10's mean/std. The two tools name their files alike
  (``res_<DC|DSA>_<dataset>_<model>_<ipc>ipc.pt``): a CAFE file is imported as kind "cafe".

- KIP (google-research ``kip/``): a ``.npz`` with ``images`` (N×H×W×C) and ``labels`` (N×K
  label vectors), read without pickle (``kip.npz``); the vectors are kept as the set's targets
  (MSE, learned), the hard labels are their argmax, and a whitened set is in KIP's ZCA variant.

Files are opened with ``torch.load(weights_only=True)`` only: tensors, lists, dicts and numbers
load, anything else (an arbitrary pickle) is refused with a DdppError before any of its code
runs. Shapes, labels and classes are checked against the dataset the set is imported for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ddpp_cli.engine import baselines, data, foreign_tools
from ddpp_cli.engine.distilled import DistilledSet, file_sha256
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.kip import npz
from ddpp_cli.engine.preprocess import save_fitted_zca
from ddpp_cli.engine.zca import fit_kip


@dataclass(frozen=True)
class ImportTarget:
    """What an imported set must fit: the dataset's name, classes, image shape and the
    preprocessing its images are in (``Preprocessing.describe()`` or ``zca_reference``)."""

    dataset: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    preprocessing: dict[str, Any]


def numpy_scalar_globals() -> list[Any]:
    """Exactly what a pickled numpy scalar needs (its reconstructor under numpy 1's and 2's
    module names, ``numpy.dtype`` and the numeric dtype classes), for files such as DC's
    ``res_*.pt``, whose accuracies are numpy ``float64``; no arrays, nothing else. Empty when
    numpy is not installed (such a file then cannot be read, and says so)."""
    try:
        import numpy
    except ImportError:
        return []
    core = getattr(numpy, "_core", None) or numpy.core
    scalar = core.multiarray.scalar
    numeric = ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64")
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        numpy.dtype,
        *(type(numpy.dtype(name)) for name in numeric),
    ]


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; DdppError for a missing file or
    anything that is not plain tensors/containers (never executes a pickle's code)."""
    path = Path(path)
    if not path.is_file():
        raise DdppError(f"{path} does not exist; pass the path of the saved .pt file.")
    try:
        with torch.serialization.safe_globals(numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DdppError(
            f"{path} cannot be read as a weights-only torch file ({reason[:200]}); only tensors, "
            "lists, dicts and numbers are accepted, never arbitrary pickles."
        ) from None


def _labels(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 1:
        raise DdppError(f"{where}: labels must be a 1-D tensor of class indices.")
    if value.is_floating_point():
        if not bool(torch.isfinite(value).all()) or not bool((value == value.round()).all()):
            raise DdppError(
                f"{where}: labels are not whole numbers (soft labels must be (N, K) float logits)."
            )
    elif value.dtype == torch.bool or value.is_complex():
        raise DdppError(f"{where}: labels must be integer class indices, not {value.dtype}.")
    return value.long()


def check_set(
    images: Any, labels: Any, target: ImportTarget, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32, labels int64)`` checked against ``target``; DdppError on a mismatch."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DdppError(f"{where}: images must be a (N, C, H, W) tensor, got {shape}.")
    if not images.is_floating_point():
        raise DdppError(f"{where}: images must be floating point, got {images.dtype}.")
    labels = _labels(labels, where)
    if images.shape[0] == 0:
        raise DdppError(f"{where}: the set holds no images.")
    if labels.shape[0] != images.shape[0]:
        raise DdppError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels.")
    if tuple(images.shape[1:]) != tuple(target.image_shape):
        raise DdppError(
            f"{where}: images are {tuple(images.shape[1:])} but {target.dataset} images are "
            f"{tuple(target.image_shape)}; import it for the dataset (and --image-size) it was "
            "made from."
        )
    num_classes = len(target.class_names)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DdppError(
            f"{where}: labels run from {int(labels.min())} to {int(labels.max())}, but "
            f"{target.dataset} has classes 0…{num_classes - 1}."
        )
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = int(torch.nonzero(counts == 0)[0])
        raise DdppError(
            f"{where}: the set has no image of class {missing} "
            f"('{target.class_names[missing]}'); it was made for another dataset."
        )
    images = images.detach().float()
    if not bool(torch.isfinite(images).all()):
        raise DdppError(f"{where}: images contain NaN or infinite values.")
    # Class-major order (stable), as ddpp's own sets are.
    order = torch.sort(labels, stable=True).indices
    return images[order].contiguous(), labels[order].contiguous()


def _lr_value(value: Any, where: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise DdppError(f"{where}: the learned lr must be one number, got shape "
                            f"{tuple(value.shape)}.")  # fmt: skip
        value = float(value.detach().reshape(-1)[0])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DdppError(f"{where}: the learned lr must be a number or a one-element tensor.")
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise DdppError(f"{where}: the learned lr is {value}; it must be a positive number.")
    return value


def _pack(
    images: torch.Tensor,
    labels: torch.Tensor,
    target: ImportTarget,
    *,
    kind: str,
    lr: float | None,
    settings: dict[str, Any],
) -> DistilledSet:
    return DistilledSet(
        images=images,
        labels=labels,
        lr=lr,
        dataset=target.dataset,
        class_names=tuple(target.class_names),
        preprocessing=dict(target.preprocessing),
        source=f"import-{kind}",
        arch=None,
        settings={"imported": {"kind": kind, **settings}},
        seed=None,
    )


def _origin(path: Path) -> dict[str, str]:
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": file_sha256(path)}


def import_mtt(
    images_path: Path,
    labels_path: Path,
    target: ImportTarget,
    *,
    lr_path: Path | None = None,
    lr: float | None = None,
    method: str = "mtt",
) -> DistilledSet:
    """MTT's ``images_best.pt`` + ``labels_best.pt`` (+ ``lr_best.pt`` or a given ``lr``).

    The caller says in ``target.preprocessing`` whether the images are ZCA-whitened (MTT's
    ``--zca``) and with which ZCA; ``method`` names the tool for the record (e.g. ``"ftd"``).
    """
    if lr_path is not None and lr is not None:
        raise DdppError("give the learned lr as a file or as a number, not both.")
    images = load_weights_only(images_path)
    labels = load_weights_only(labels_path)
    where = f"{images_path} + {labels_path}"
    logits = _soft_logits(labels, target, where)
    if logits is not None:
        if not isinstance(images, torch.Tensor) or images.shape[:1] != logits.shape[:1]:
            count = images.shape[0] if isinstance(images, torch.Tensor) else "no"
            raise DdppError(f"{where}: {count} images but {logits.shape[0]} label vectors.")
        order = torch.sort(logits.argmax(1), stable=True).indices  # class-major, as check_set
        images, logits = images[order], logits[order]
        labels = logits.argmax(1)
    images, labels = check_set(images, labels, target, where)
    tag = Path(images_path).stem.removeprefix("images_")
    settings: dict[str, Any] = {
        "method": method,
        "images": _origin(images_path),
        "labels": _origin(labels_path),
        "zca": target.preprocessing.get("kind") == "zca",
        "selection": foreign_tools.mtt_selection(tag),
    }
    if lr_path is not None:
        lr = _lr_value(load_weights_only(lr_path), str(lr_path))
        settings["lr"] = _origin(lr_path)
    elif lr is not None:
        lr = _lr_value(lr, "--lr")
        settings["lr"] = "given"
    if logits is None:
        return _pack(images, labels, target, kind="mtt", lr=lr, settings=settings)
    settings["hard_labels"] = "argmax of the label vectors"
    settings["soft_labels"] = "logits learned by DATM/PAD, soft-CE at temperature 1"
    packed = _pack(images, labels, target, kind="mtt", lr=lr, settings=settings)
    return replace(
        packed, targets=logits, label_mode="learned", target_loss="soft-ce", temperature=1.0
    )


def _soft_logits(value: Any, target: ImportTarget, where: str) -> torch.Tensor | None:
    """DATM's/PAD's float ``labels_best.pt`` (N, K logits, learned) as float32; None for
    anything that is not a float tensor of more than one dimension (hard labels, checked by
    :func:`check_set`). DdppError for a shape that is not (N, K) or non-finite values."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim < 2:
        return None
    num_classes = len(target.class_names)
    if value.ndim != 2 or value.shape[1] != num_classes:
        raise DdppError(
            f"{where}: float labels of shape {tuple(value.shape)}, but soft labels must be "
            f"(N, {num_classes}) logits, one per {target.dataset} class; import it for the "
            "dataset it was made from."
        )
    if not bool(torch.isfinite(value).all()):
        raise DdppError(f"{where}: the soft labels (logits) contain NaN or infinite values.")
    return value.detach().float().contiguous()


def dc_experiments(content: Any, where: str) -> list[Any]:
    """The ``data`` list of a DC/DSA/DM ``res_*.pt`` dict, checked for its outer structure."""
    if not isinstance(content, dict) or "data" not in content:
        raise DdppError(
            f"{where} is not a DC/DSA/DM result file: expected a dict with a 'data' list of "
            "[images, labels] pairs."
        )
    entries = content["data"]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise DdppError(f"{where}: 'data' must be a non-empty list of [images, labels] pairs.")
    return list(entries)


def import_dc(
    path: Path, target: ImportTarget, *, experiment: int = 0, method: str = "dc",
    kind: str = "dc",
) -> DistilledSet:  # fmt: skip
    """Experiment ``experiment`` of a ``res_*.pt`` of ``kind`` "dc" (DC/DSA/DM; ``method`` names
    which, for the record) or "cafe". Those tools learn no lr: the set's lr is None (evaluation
    uses its default)."""
    entries = dc_experiments(load_weights_only(path), str(path))
    if isinstance(experiment, bool) or not isinstance(experiment, int):
        raise DdppError(f"the experiment index must be an integer, got {experiment!r}.")
    if not 0 <= experiment < len(entries):
        raise DdppError(
            f"{path} holds {len(entries)} experiment(s); choose an index from 0 to "
            f"{len(entries) - 1} (got {experiment})."
        )
    entry = entries[experiment]
    where = f"{path} experiment {experiment}"
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise DdppError(f"{where}: expected an [images, labels] pair.")
    images, labels = check_set(entry[0], entry[1], target, where)
    settings = {
        "method": method,
        "file": _origin(path),
        "experiment": experiment,
        "experiments_in_file": len(entries),
        "selection": foreign_tools.get_tool(kind).saved,
    }
    return _pack(images, labels, target, kind=kind, lr=None, settings=settings)


# ------------------------------------------------------------------ one entry point for the CLI


def import_kip(path: Path, target: ImportTarget) -> DistilledSet:
    """KIP's ``.npz`` (:mod:`ddpp_cli.engine.kip.npz`): images to N×C×H×W, the label vectors
    kept as targets (label_mode learned, MSE) in the images' class-major order, hard labels
    their argmax."""
    images, vectors = npz.read_set(path)
    if vectors.shape[1] != len(target.class_names):
        raise DdppError(
            f"{path}: label vectors of {vectors.shape[1]} classes, but {target.dataset} has "
            f"{len(target.class_names)}; import it for the dataset it was made from."
        )
    order = torch.sort(vectors.argmax(1), stable=True).indices
    images, vectors = images[order], vectors[order]
    images, labels = check_set(images, vectors.argmax(1), target, str(path))
    settings = {**_origin(path), "zca": target.preprocessing.get("kind") == "zca",
                "hard_labels": "argmax of the label vectors",
                "selection": foreign_tools.get_tool("kip").saved}  # fmt: skip
    packed = _pack(images, labels, target, kind="kip", lr=None, settings=settings)
    return replace(packed, targets=vectors, label_mode="learned", target_loss="mse")


@dataclass(frozen=True)
class ForeignFiles:
    """The files of one foreign set: ``kind`` a tool of :mod:`~ddpp_cli.engine.foreign_tools`;
    its layout "mtt" (images, labels, maybe lr) or "res" (``images`` is the res_*.pt file)."""

    kind: str
    images: Path  # MTT's images_<tag>.pt, or the DC/DSA/DM res_*.pt
    labels: Path | None = None
    lr: Path | None = None


def find_files(path: Path, kind: str | None = None) -> ForeignFiles:
    """What ``path`` holds: a folder with MTT's ``images_best.pt`` (or with one ``res_*.pt``),
    MTT's ``images_<tag>.pt`` (``labels_<tag>.pt`` and ``lr_<tag>.pt`` beside it), or any other
    ``.pt`` file (a DC/DSA/DM result), or KIP's ``.npz``. ``kind`` (a tool's name: "mtt", "dc",
    "cafe", "kip") decides where the name cannot (a CAFE file is named as DC's)."""
    path = Path(path)
    layout = None if kind is None else foreign_tools.get_tool(kind).layout
    if path.is_dir():
        found = [p for p in (path / "images_best.pt",) if p.is_file() and layout in (None, "mtt")]
        if not found and layout in (None, "res"):
            found = sorted(path.glob("res_*.pt"))
        if len(found) != 1:
            raise DdppError(
                f"{path} holds {'several res_*.pt files' if len(found) > 1 else 'no set'}; "
                "pass MTT's images_best.pt or a DC/DSA/DM res_*.pt file itself."
            )
        path = found[0]
    elif not path.is_file():
        raise DdppError(f"{path} does not exist; pass a .pt file or the folder holding it.")
    if kind is None:
        by_suffix = "kip" if path.suffix == ".npz" else "dc"
        kind = "mtt" if path.name.startswith("images_") else by_suffix
    if foreign_tools.get_tool(kind).layout in ("res", "npz"):
        return ForeignFiles(kind, path)
    if not path.name.startswith("images_"):
        raise DdppError(
            f"{path.name} is not named like MTT's images file (images_<tag>.pt, with "
            "labels_<tag>.pt beside it); pass --import-kind dc for a DC/DSA/DM result file "
            "(cafe for CAFE's)."
        )
    tag = path.name[len("images_") :]
    labels = path.with_name(f"labels_{tag}")
    if not labels.is_file():
        raise DdppError(f"MTT's labels file {labels} is missing; it belongs beside {path.name}.")
    lr = path.with_name(f"lr_{tag}")
    return ForeignFiles("mtt", path, labels, lr if lr.is_file() else None)


def import_set(
    path: Path,
    target: ImportTarget,
    *,
    kind: str | None = None,
    experiment: int | None = None,
    lr: float | None = None,
) -> DistilledSet:
    """The foreign set at ``path`` (see :func:`find_files`) checked against ``target``.

    MTT: the learned lr comes from ``lr_<tag>.pt`` when it is there, else from ``lr`` (the set
    then has none when ``lr`` is None). DC/DSA/DM and CAFE: ``experiment`` picks the experiment
    (default 0); those tools learn no lr, so ``lr`` is not stored with the set.
    """
    files = find_files(path, kind)
    if foreign_tools.get_tool(files.kind).layout == "npz":
        if experiment is not None or lr is not None:
            raise DdppError("KIP's .npz holds one set and no lr; drop --experiment and --lr.")
        return import_kip(files.images, target)
    if foreign_tools.get_tool(files.kind).layout == "res":
        return import_dc(
            files.images, target, experiment=0 if experiment is None else experiment,
            method=files.kind, kind=files.kind,
        )  # fmt: skip
    if experiment is not None:
        raise DdppError("--experiment picks one set of a DC/DSA/DM res_*.pt; MTT's files hold one.")
    if files.lr is not None:
        return import_mtt(files.images, files.labels, target, lr_path=files.lr)
    return import_mtt(files.images, files.labels, target, lr=lr)


def import_for_dataset(
    path: Path,
    dataset: str,
    *,
    kind: str | None = None,
    experiment: int | None = None,
    lr: float | None = None,
    zca: bool | None = None,
    zca_path: Path | None = None,
    zca_out: Path | None = None,
    image_size: int | None = None,
    data_root: Path | None = None,
    download: bool = True,
    seed: int = 0,
) -> DistilledSet:
    """Import the set at ``path`` for ``dataset``, in the preprocessing its images are in.

    ZCA (the images were whitened, MTT's ``--zca``): ``zca_path`` (e.g. the ``zca.safetensors``
    of a ddpp buffer), else ``zca`` True fits one on the train split as MTT does and saves it to
    ``zca_out``; ``zca=None`` means the dataset's default for MTT sets (on for CIFAR, as MTT's
    scripts run) and off for DC/DSA/DM and CAFE sets (those tools never whiten). Otherwise the
    images are taken as normalised with the mean/std the tool used (its registry record: MTT and
    CAFE normalised CIFAR-100 with CIFAR-10's), and the set records them, so that its test split
    is normalised alike. ``image_size`` and ``seed`` (the split of single-folder datasets) are
    recorded so that a saved set is re-evaluated on the same data.
    """
    files = find_files(path, kind)
    tool = foreign_tools.get_tool(files.kind)
    info = data.info(dataset)
    if zca_path is not None and zca is False:
        raise DdppError("--zca-file PATH and --no-zca contradict each other; drop one.")
    if zca is None:
        zca = zca_path is not None or (tool.whitens and info.default_zca)
    normalization = None if zca else foreign_tools.tool_normalization(tool.name, info.name)
    if zca and zca_path is None and tool.zca_variant == "kip":  # KIP's own ZCA, not ddpp's
        if zca_out is None:
            raise ValueError("zca_out is needed to save KIP's ZCA")
        zca_path = save_fitted_zca(
            fit_kip, info.name, zca_out, root=data_root, download=download,
            image_size=image_size, seed=seed,
        )  # fmt: skip
    prepared, described, _ = baselines.prepare_pool(
        info.name, use_zca=bool(zca), zca_path=zca_path, zca_out=zca_out, data_root=data_root,
        download=download, image_size=image_size, seed=seed, normalization=normalization,
    )  # fmt: skip
    target = ImportTarget(
        dataset=info.name,
        class_names=tuple(prepared.train.class_names),
        image_shape=tuple(int(s) for s in prepared.train.images.shape[1:]),
        preprocessing=described,
    )
    imported = import_set(files.images, target, kind=files.kind, experiment=experiment, lr=lr)
    record = dict(imported.settings["imported"])
    if not zca:
        record["normalized_as"] = foreign_tools.normalization_source(tool.name, info.name)
    settings = {
        **imported.settings,
        "imported": record,
        "image_size": image_size,
        "data_seed": seed,
    }
    return replace(imported, settings=settings)


def default_lr_note(imported: DistilledSet, lr: float, lr_source: str) -> str | None:
    """Which lr an imported set was evaluated at, where its tool learns one but the set came
    without it (``lr_source`` "default", see ``evaluate.resolve_lr``), and how its tool
    trained networks on it where its record says (KIP); None otherwise."""
    record = imported.settings.get("imported") or {}
    kind = record.get("kind")
    if kind not in foreign_tools.list_tools():
        return None
    tool = foreign_tools.get_tool(kind)
    notes = [tool.protocol + "."] if tool.protocol else []
    if record.get("soft_labels"):
        notes.append(
            "labels_best.pt held float logits (learned by DATM/PAD): kept as the set's soft-CE "
            "targets at temperature 1; where the evaluation trains on hard labels, they are the "
            "logits' argmax."
        )
    if lr_source == "default" and tool.learns_lr:
        notes.insert(0, f"lr {lr:g}, the default: {tool.missing_lr}.")
    return " ".join(notes) or None
