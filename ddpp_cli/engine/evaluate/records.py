"""The evaluation records: each finished run kept in a folder, so that a killed evaluation
resumes with its first missing run, and where that folder is by default."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ddpp_cli import __version__
from ddpp_cli.engine import layout, store
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate.protocol import EvalConfig
from ddpp_cli.engine.training import LabelVectors

RECORDS_FORMAT = "ddpp.evaluation/1"
RUN_SET_NAMES = (layout.BEST_NAME, layout.DISTILLED_NAME)  # a run folder's sets, best first

# run -> (accuracy, diverged, train-set size, seconds)
FinishedRuns = dict[int, tuple[float, bool, int, float]]


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the dtype, shape and bytes of ``tensors`` (any device), hex."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{flat.dtype}{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_records_dir(set_path: Path | None = None) -> Path:
    """Where ``evaluate``/``crossarch`` keep the finished runs of a set by default.

    A set in a run folder (``RUN/best.safetensors``, ``RUN/distilled.safetensors``) or the run
    folder itself: ``RUN/evaluations/``. Any other set file ``DIR/NAME.safetensors``:
    ``DIR/NAME.eval/``. No file (a baseline): the ddpp data folder's ``evaluations/``. File
    names inside carry a hash of the set, test split and protocol, so one folder can hold the
    records of many evaluations without mixing them.
    """
    if set_path is None:
        return layout.data_home() / layout.RECORDS_DIRNAME
    set_path = Path(set_path)
    if set_path.is_dir():
        return set_path / layout.RECORDS_DIRNAME
    if set_path.name in RUN_SET_NAMES:
        return set_path.parent / layout.RECORDS_DIRNAME
    return set_path.with_name(f"{set_path.stem}.eval")


def evaluation_identity(
    first_set: tuple[torch.Tensor, torch.Tensor],
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    config: EvalConfig,
    lr: float,
    vectors: LabelVectors | None = None,
) -> dict[str, Any]:
    """What a recorded run must share with a new one to be reused in its place.

    The set (content hash of run 0's images and labels), the test split as transformed (hash),
    the class count, the protocol (every :class:`EvalConfig` field but ``runs``, since run r does
    not depend on how many follow) and the learning rate actually used.

    The labels that train: ``config.labels`` is left out (on a hard-label set both choices train
    alike), and ``vectors``, the label vectors training uses (None: hard labels), add their
    values to the set's hash and their loss as ``protocol.labels``. So a hard-label evaluation
    keeps the identity it had before ``--labels`` existed, and never shares records with one
    trained on label vectors.
    """
    settings = asdict(config)
    del settings["runs"], settings["labels"]
    protocol: dict[str, Any] = {**settings, "lr": lr}
    tensors = list(first_set)
    if vectors is not None:
        tensors.append(vectors.vectors)
        protocol["labels"] = {"loss": vectors.loss, "temperature": vectors.temperature}
    return {
        "set_sha256": tensor_digest(*tensors),
        "test_sha256": tensor_digest(test_images, test_labels),
        "num_classes": num_classes,
        "protocol": protocol,
    }


_RECORDS_REMEDY = "delete it to evaluate anew"
# What each recorded run holds (as runs.py writes it); the first three are needed.
_RUN_KEYS: dict[str, store.Check] = {
    "accuracy": (lambda v: isinstance(v, float), "must be a fraction"),
    "diverged": store.FLAG,
    "train_size": store.INT,
    "seconds": store.NUMBER,
    "device": store.TEXT,
    "parallel": store.INT,
    "ddpp_version": store.TEXT,
    "torch_version": store.TEXT,
}


def _checked_runs(path: Path, content: Any) -> dict[int, dict[str, Any]]:
    """The runs of records file ``path`` (its JSON ``content``) by number; DdppError naming
    the file and the first key that is missing or wrongly typed."""

    def unusable(key: str, problem: str) -> DdppError:
        return store.unusable(path, "evaluation records", key, problem, _RECORDS_REMEDY)

    if not isinstance(content, dict):
        raise DdppError(
            f"{path} is not readable evaluation records (not a JSON object); {_RECORDS_REMEDY}."
        )
    store.check_keys(
        path, content, {"format": store.TEXT, "identity": store.OBJECT, "runs": store.OBJECT},
        what="evaluation records", remedy=_RECORDS_REMEDY, required=("runs",),
    )  # fmt: skip
    runs = {}
    for run, entry in content["runs"].items():
        if not run.isdigit():
            raise unusable(f"runs.{run}", "must be numbered by run")
        if not isinstance(entry, dict):
            raise unusable(f"runs.{run}", f"must be an object (got {store.shown(entry)})")
        store.check_keys(
            path, entry, _RUN_KEYS, what="evaluation records", remedy=_RECORDS_REMEDY,
            required=("accuracy", "diverged", "train_size"), prefix=f"runs.{run}.",
        )  # fmt: skip
        runs[int(run)] = dict(entry)
    return runs


# What an evaluation result's JSON (EvalResult.to_json) holds: in summary.json, row.json.
_RESULT_KEYS: dict[str, store.Check] = {
    "arch": store.TEXT,
    "accuracies": store.NUMBERS,
    "mean": store.NUMBER,
    "std": store.NUMBER,
    "seconds": store.NUMBER,
    "lr": store.NUMBER,
    "protocol": store.OBJECT,
    "selection": store.TEXT,
    "provenance": store.OBJECT,
}
_PROVENANCE_KEYS: dict[str, store.Check] = {
    "reused_runs": store.INTS,
    "made_elsewhere": (
        lambda v: isinstance(v, list) and all(isinstance(m, dict) for m in v),
        "must be a list of objects",
    ),
}


def check_result_json(path: Path, key: str, value: Any, *, what: str, remedy: str) -> None:
    """DdppError (:func:`store.unusable`, naming ``path`` and ``key``.field) unless ``value``
    is an evaluation result as :meth:`EvalResult.to_json` writes it."""
    if not isinstance(value, dict):
        problem = f"must be an object (got {store.shown(value)})"
        raise store.unusable(path, what, key, problem, remedy)
    unknown = sorted(set(value) - set(_RESULT_KEYS))
    if unknown:
        raise store.unusable(path, what, f"{key}.{unknown[0]}", "is not part of a result", remedy)
    store.check_keys(
        path, value, _RESULT_KEYS, what=what, remedy=remedy, prefix=f"{key}.",
        required=("arch", "accuracies", "mean", "std", "seconds", "lr"),
    )  # fmt: skip
    store.check_keys(
        path, value.get("provenance") or {}, _PROVENANCE_KEYS, what=what, remedy=remedy,
        prefix=f"{key}.provenance.",
    )  # fmt: skip


@dataclass(frozen=True)
class EvalRecords:
    """The finished runs of one evaluation, kept in ``<folder>/<arch>-<hash>.json``.

    Each write replaces the whole file atomically (temporary file, fsync, ``os.replace``).
    """

    path: Path
    identity: dict[str, Any]
    runs: dict[int, dict[str, Any]]

    @classmethod
    def open(cls, folder: Path, identity: dict[str, Any]) -> EvalRecords:
        """The records of ``identity`` in ``folder`` (none yet when the file is absent).

        DdppError when the file is unreadable or records another evaluation than its name says.
        """
        text = json.dumps(identity, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        arch = identity["protocol"]["arch"]
        path = Path(folder) / f"{arch}-{key}.json"
        if not path.is_file():
            return cls(path, identity, {})
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DdppError(
                f"{path} is not readable evaluation records ({exc}); delete it to evaluate anew."
            ) from None
        runs = _checked_runs(path, content)
        if content.get("format") != RECORDS_FORMAT or content.get("identity") != identity:
            raise DdppError(
                f"{path} records another set or protocol than its name says; delete it to "
                "evaluate anew."
            )
        return cls(path, identity, runs)

    def save(self) -> None:
        content = {
            "format": RECORDS_FORMAT,
            "ddpp_version": __version__,
            "identity": self.identity,
            "runs": {str(run): self.runs[run] for run in sorted(self.runs)},
        }
        store.atomic_write_text(self.path, json.dumps(content, indent=2) + "\n")
