"""Wrongly typed metadata: every reader of a file's metadata (safetensors header or JSON) checks
each key's type and shape, and refuses a file that is otherwise well formed but holds one
wrongly typed key with one line naming the file and the key (exit 2 through the CLI), never a
traceback. Each file is written by its real writer, then one key is edited."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_one_line_error
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import distill, distilled, store, zca
from ddpp_cli.engine.baselines.selection import read_selection
from ddpp_cli.engine.buffer import files as buffer_files
from ddpp_cli.engine.compare import run as compare_run
from ddpp_cli.engine.distill import DistillConfig, DistillState, RunFolder
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalRecords, EvalResult
from ddpp_cli.engine.functional import ParamLayout
from ddpp_cli.engine.visualize import export_folder

runner = CliRunner()
MISSING = object()  # a key to remove


def edit_metadata(path: Path, **changes: Any) -> None:
    """Rewrite the safetensors file ``path`` with its header metadata changed (JSON-encoded, as
    :func:`store.encode_metadata` writes it; MISSING removes a key), its tensors kept."""
    with safe_open(str(path), framework="pt") as handle:
        raw = dict(handle.metadata() or {})
    for key, value in changes.items():
        if value is MISSING:
            raw.pop(key, None)
        else:
            raw[key] = json.dumps(value)
    save_file(load_file(str(path)), str(path), metadata=raw)


def edit_json(path: Path, **changes: Any) -> None:
    content = json.loads(path.read_text())
    for key, value in changes.items():
        if value is MISSING:
            content.pop(key, None)
        else:
            content[key] = value
    path.write_text(json.dumps(content))


def assert_names(caught: pytest.ExceptionInfo, path: Path, key: str) -> None:
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and f"'{key}'" in message, message


# ------------------------------------------------------------------------- store itself


@pytest.mark.parametrize("header", [[1, 2], "text", {"format": 3}], ids=["list", "text", "int"])
def test_a_header_whose_metadata_is_not_an_object_of_texts_is_one_line(tmp_path, header):
    path = tmp_path / "x.safetensors"
    content = {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    encoded = json.dumps({**content, "__metadata__": header}).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(4))
    for read in (store.read_metadata, lambda p: store.read(p, store.ZCA_FORMAT)):
        with pytest.raises(DdppError) as caught:
            read(path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)


# ------------------------------------------------------------------------- distilled sets


def small_set(**changes: Any) -> DistilledSet:
    fields = {
        "images": torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0)),
        "labels": torch.tensor([0, 0, 1, 1]), "lr": 0.01, "dataset": "mnist",
        "class_names": ("a", "b"),
        "preprocessing": {"kind": "normalize", "mean": [0.1307], "std": [0.3081]},
        "settings": {"image_size": None}, "seed": 0,
    }  # fmt: skip
    return DistilledSet(**{**fields, **changes})


SET_CASES = [
    ("preprocessing", {"kind": "normalize", "std": [0.3]}, "preprocessing.mean"),
    ("preprocessing", {"kind": "normalize", "mean": "0.1", "std": [0.3]}, "preprocessing.mean"),
    ("preprocessing", {"kind": "normalize", "mean": [0, 0], "std": [1, 1]}, "preprocessing.mean"),
    ("preprocessing", {"kind": "normalize", "mean": [0.1], "std": None}, "preprocessing.std"),
    ("preprocessing", {"kind": "zca", "zca_file": 3}, "preprocessing.zca_file"),
    ("preprocessing", {"kind": "zca", "zca_sha256": [1]}, "preprocessing.zca_sha256"),
    ("preprocessing", {"kind": "zca", "regularization": "0.1"}, "preprocessing.regularization"),
    ("preprocessing", {"kind": "pca"}, "preprocessing.kind"),
    ("preprocessing", "normalize", "preprocessing"),
    ("preprocessing", MISSING, "preprocessing"),
    ("settings", [1, 2], "settings"),
    ("settings", "x", "settings"),
    ("class_names", "ab", "class_names"),
    ("class_names", [0, 1], "class_names"),
    ("class_names", [], "class_names"),
    ("dataset", 3, "dataset"),
    ("dataset", MISSING, "dataset"),
    ("source", ["distill"], "source"),
    ("arch", 1, "arch"),
    ("seed", "7", "seed"),
    ("ipc", 2.5, "ipc"),
    ("iteration", "12", "iteration"),
    ("val_accuracy", [0.5], "val_accuracy"),
    ("diverged_at", -1, "diverged_at"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value", "named"), SET_CASES)
def test_a_distilled_set_with_a_wrongly_typed_key_is_one_line(tmp_path, key, value, named):
    path = distilled.save(tmp_path / "set.safetensors", small_set())
    edit_metadata(path, **{key: value})
    with pytest.raises(DdppError) as caught:
        distilled.load(path)
    assert_names(caught, path, named)


def test_a_well_formed_set_still_loads(tmp_path):
    path = distilled.save(tmp_path / "set.safetensors", small_set(seed=None, settings={}))
    edit_metadata(path, settings=None, arch=None)
    loaded = distilled.load(path)
    assert loaded.settings == {} and loaded.arch is None and loaded.source == "distill"


def test_the_cli_prints_a_wrongly_typed_set_on_one_line(tmp_path):
    path = distilled.save(tmp_path / "set.safetensors", small_set())
    edit_metadata(path, preprocessing={"kind": "normalize", "std": [0.3]})
    result = runner.invoke(app, ["visualize", str(path), "--out", str(tmp_path / "g.png")])
    assert_one_line_error(result, str(path), "'preprocessing.mean'")


# ------------------------------------------------------------------------------- ZCA files


@pytest.fixture
def zca_file(tmp_path) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whitening = zca.fit(torch.rand(20, 1, 3, 3, generator=torch.Generator().manual_seed(1)))
    finally:
        torch.set_num_threads(threads)
    return zca.save(whitening, tmp_path / "zca.safetensors", {"dataset": "mnist"})


@pytest.mark.parametrize(
    ("key", "value"),
    [("shape", "1x3x3"), ("shape", [1, 3]), ("shape", [1, 3, 0]), ("shape", MISSING),
     ("regularization", "0.1"), ("regularization", True), ("dataset", 3)],
)  # fmt: skip
def test_a_zca_file_with_a_wrongly_typed_key_is_one_line(zca_file, key, value):
    edit_metadata(zca_file, **{key: value})
    with pytest.raises(DdppError) as caught:
        zca.load(zca_file)
    assert_names(caught, zca_file, key)


# ----------------------------------------------------------------------------- checkpoints


def run_config() -> DistillConfig:
    return DistillConfig.from_preset("mnist", 1, iterations=10)


def checkpoint_folder(folder: Path) -> RunFolder:
    """A run folder with a real checkpoint (RunFolder.save_checkpoint) of a worked state."""
    images = torch.zeros(2, 1, 3, 3)
    state = DistillState.start(
        images, 0.01, [0, 1], seed=3, device=torch.device("cpu"), lr_img=1.0, lr_lr=1e-3
    )
    config = run_config()
    run_meta = {
        "config": asdict(config), "method": config.method, "buffer": None,
        "buffer_config": None, "dataset": config.dataset, "arch": config.arch, "seed": 0,
    }  # fmt: skip

    def as_set(images: torch.Tensor, lr: float | None, iteration: int) -> DistilledSet:
        return small_set(images=images.detach(), labels=torch.tensor([0, 1]), lr=lr)

    files = RunFolder(folder, as_set, {"labels": torch.tensor([0, 1])}, run_meta)
    files.create()
    files.save_checkpoint(state.state_dict())
    return files


CHECKPOINT_CASES = [
    ("iteration", "6", "iteration"),
    ("iteration", MISSING, "iteration"),
    ("expert_position", -1, "expert_position"),
    ("experts", "0,1", "experts"),
    ("experts", [0.5], "experts"),
    ("best_iteration", "4", "best_iteration"),
    ("best_val_accuracy", "high", "best_val_accuracy"),
    ("elapsed_seconds", [1], "elapsed_seconds"),
    ("config", [1], "config"),
    ("config", {**asdict(run_config()), "method": 3}, "config.method"),
    ("config", {**asdict(run_config()), "ipc": "1"}, "config.ipc"),
    ("config", {**asdict(run_config()), "eps": "0.1"}, "config.eps"),
    ("config", {**asdict(run_config()), "zca": "no"}, "config.zca"),
    ("buffer", 3, "buffer"),
    ("buffer_config", "x", "buffer_config"),
    ("method", None, "method"),
]


@pytest.mark.parametrize(("key", "value", "named"), CHECKPOINT_CASES)
def test_a_checkpoint_with_a_wrongly_typed_key_is_one_line(tmp_path, key, value, named):
    files = checkpoint_folder(tmp_path / "run")
    distill.read_checkpoint(files.checkpoint)  # as written: readable
    edit_metadata(files.checkpoint, **{key: value})
    with pytest.raises(DdppError) as caught:
        distill.read_checkpoint(files.checkpoint)
    assert_names(caught, files.checkpoint, named)


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"config": {**asdict(run_config()), "surprise": 1}}, "config.surprise"),
     ({"config": {k: v for k, v in asdict(run_config()).items() if k != "ipc"}}, "config.ipc"),
     ({"config": {**asdict(run_config()), "iterations": 10.5}}, "config.iterations"),
     ({"iteration": "4"}, "iteration"), ({"buffer": ["b"]}, "buffer")],
)  # fmt: skip
def test_a_saved_config_that_is_not_this_ddpps_is_one_line(tmp_path, changes, named):
    files = checkpoint_folder(tmp_path / "run")
    edit_metadata(files.checkpoint, **changes)
    for read in (distill.saved_config, distill.resume_config):
        with pytest.raises(DdppError) as caught:
            read(files.folder)
        assert_names(caught, files.checkpoint, named)


def test_resuming_a_checkpoint_of_a_wrongly_typed_config_exits_2_on_one_line(tmp_path):
    files = checkpoint_folder(tmp_path / "run")
    edit_metadata(files.checkpoint, config={**asdict(run_config()), "ipc": "ten"})
    result = runner.invoke(app, ["distill", "--resume", str(files.folder)])
    assert_one_line_error(result, str(files.checkpoint), "'config.ipc'")


# ---------------------------------------------------------------- summary.json, metrics


def a_result() -> EvalResult:
    return EvalResult("convnet", [0.5, 0.7], 0.6, 0.1, 2.0, 0.01, {"runs": 2, "epochs": 3})


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"iterations": "3"}, "iterations"), ({"best_iteration": 2.5}, "best_iteration"),
     ({"test": "72.9"}, "test"), ({"test": {**a_result().to_json(), "mean": "0.6"}},
                                   "test.mean"),
     ({"test": {**a_result().to_json(), "protocol": [2]}}, "test.protocol"),
     ({"test": {**a_result().to_json(), "extra": 1}}, "test.extra"),
     ({"test": {**a_result().to_json(), "provenance": {"reused_runs": "0"}}},
      "test.provenance.reused_runs")],
)  # fmt: skip
def test_an_earlier_summary_with_a_wrongly_typed_key_is_one_line(tmp_path, changes, named):
    files = checkpoint_folder(tmp_path / "run")
    summary = {"iterations": 0, "best_iteration": None, "test": a_result().to_json()}
    files.write_summary(summary)
    assert files.previous_summary() == json.loads(json.dumps(summary))
    edit_json(files.summary, **changes)
    with pytest.raises(DdppError) as caught:
        files.previous_summary()
    assert_names(caught, files.summary, named)


def test_wrongly_typed_metrics_values_are_skipped_not_a_traceback(tmp_path):
    files = checkpoint_folder(tmp_path / "run")
    files.log({"iteration": 1, "pruned_fraction": 0.25, "val_std": 0.1})
    files.log({"iteration": 2, "pruned_fraction": "a lot"})
    assert files.pruned_stats() == {"min": 0.25, "max": 0.25, "mean": 0.25}


# ---------------------------------------------------------------------- evaluation records


def real_records(folder: Path) -> Path:
    identity = {"protocol": {"arch": "convnet"}, "set_sha256": "0"}
    book = EvalRecords.open(folder, identity)
    book.runs[0] = {
        "accuracy": 0.5, "diverged": False, "train_size": 10, "seconds": 1.0, "device": "cpu",
        "parallel": 1, "ddpp_version": "0", "torch_version": "0",
    }  # fmt: skip
    book.save()
    assert EvalRecords.open(folder, identity).runs == book.runs
    return book.path


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"runs": [1]}, "runs"), ({"runs": {"first": {}}}, "runs.first"),
     ({"runs": {"0": 0.5}}, "runs.0"), ({"runs": {"0": {"accuracy": "0.5"}}}, "runs.0.accuracy"),
     ({"runs": {"0": {"accuracy": 0.5, "diverged": 0, "train_size": 1}}}, "runs.0.diverged"),
     ({"runs": {"0": {"accuracy": 0.5, "diverged": False}}}, "runs.0.train_size"),
     ({"runs": {"0": {"accuracy": 0.5, "diverged": False, "train_size": 1, "device": 0}}},
      "runs.0.device"),
     ({"identity": "x"}, "identity"), ({"runs": MISSING}, "runs")],
)  # fmt: skip
def test_evaluation_records_with_a_wrongly_typed_key_are_one_line(tmp_path, changes, named):
    path = real_records(tmp_path)
    edit_json(path, **changes)
    with pytest.raises(DdppError) as caught:
        EvalRecords.open(tmp_path, {"protocol": {"arch": "convnet"}, "set_sha256": "0"})
    assert_names(caught, path, named)


# ------------------------------------------------------------------ comparison rows


def finished_row(folder: Path) -> Path:
    folder.mkdir(parents=True)
    compare_run._write_row(folder, {"ipc": 1}, None)
    path = folder / "row.json"
    edit_json(
        path, status="finished",
        result={"seconds": 3.0, "set": None, "evaluation": a_result().to_json()},
    )  # fmt: skip
    assert compare_run.read_row(folder)["status"] == "finished"
    return path


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"status": 1}, "status"), ({"settings": [1]}, "settings"), ({"result": MISSING}, "result"),
     ({"result": "done"}, "result"), ({"result": {"seconds": "3"}}, "result.seconds"),
     ({"result": {"seconds": 3, "set": 1}}, "result.set"),
     ({"result": {"seconds": 3}}, "result.evaluation"),
     ({"result": {"seconds": 3, "evaluation": {**a_result().to_json(), "lr": None}}},
      "result.evaluation.lr")],
)  # fmt: skip
def test_a_comparison_row_with_a_wrongly_typed_key_is_one_line(tmp_path, changes, named):
    path = finished_row(tmp_path / "row")
    edit_json(path, **changes)
    with pytest.raises(DdppError) as caught:
        compare_run.read_row(tmp_path / "row")
    assert_names(caught, path, named)


# ------------------------------------------------------------------ kept selections


@pytest.mark.parametrize(
    "changes",
    [{"selection": "features"}, {"identity": {"other": 1}}, {"indices": torch.tensor([0.5])},
     {"indices": torch.tensor([[0, 1]])}, {"indices": torch.tensor([0, 99])}],
    ids=["record", "identity", "float-indices", "2d-indices", "out-of-range"],
)  # fmt: skip
def test_a_kept_selection_that_is_wrongly_typed_is_selected_again(tmp_path, changes):
    path = tmp_path / "selection.safetensors"
    identity = {"method": "herding"}
    metadata = {"identity": identity, "selection": {"features": {"epochs": 2}}}
    store.write(path, {"indices": torch.tensor([0, 3])}, store.SELECTION_FORMAT, metadata)
    indices, record = read_selection(path, identity, pool_size=10)
    assert indices.tolist() == [0, 3] and record == metadata["selection"]
    tensors = {"indices": changes.pop("indices", torch.tensor([0, 3]))}
    store.write(path, tensors, store.SELECTION_FORMAT, {**metadata, **changes})
    assert read_selection(path, identity, pool_size=10) is None


# ------------------------------------------------------------------------ export set.json


@pytest.mark.parametrize(
    ("changes", "named"), [({"files": "00_a/0000.png"}, "files"), ({"folders": 3}, "folders")]
)
def test_an_earlier_export_with_a_wrongly_typed_key_is_one_line(tmp_path, changes, named):
    out = tmp_path / "export"
    export_folder(small_set(), out)
    edit_json(out / "set.json", **changes)
    with pytest.raises(DdppError) as caught:
        export_folder(small_set(), out, force=True)
    assert_names(caught, out / "set.json", named)


# ---------------------------------------------------------------------- expert files


def expert_file(folder: Path) -> Path:
    """An expert file with the metadata buffer training writes."""
    layout = ParamLayout(("w", "b"), ((2, 2), (2,)))
    return store.write(
        buffer_files.expert_path(folder, 0), {"params": torch.zeros(3, layout.numel)},
        store.TRAJECTORY_FORMAT,
        {"dataset": "mnist", "arch": "convnet", "expert": 0, "seed": 0, "config": {},
         "layout": layout.to_json(), "preprocessing": {"kind": "normalize"}, "data": {},
         "test_accuracy": [0.5, 0.6], "train_loss": [1.0, 0.5]},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value"),
    [("test_accuracy", "0.6"), ("test_accuracy", [0.5, None]), ("train_loss", {"a": 1}),
     ("layout", [["w", "2x2"]]), ("layout", "w"), ("config", [1]), ("expert", "0"),
     ("source", "mtt.pt")],
)  # fmt: skip
def test_an_expert_file_with_a_wrongly_typed_key_is_one_line(tmp_path, key, value):
    path = expert_file(tmp_path)
    assert buffer_files.load_trajectory(path).epochs == 2
    edit_metadata(path, **{key: value})
    for read in (
        buffer_files.load_trajectory,
        lambda p: buffer_files.check_expert_file(p, 2, 6),
        lambda p: buffer_files.write_manifest(tmp_path, {"format": "ddpp.buffer/1"}),
    ):
        with pytest.raises(DdppError) as caught:
            read(path)
        assert_names(caught, path, key)
