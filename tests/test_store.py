import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpp_cli import __version__
from ddpp_cli.engine import store
from ddpp_cli.engine.errors import DdppError


def test_round_trip_keeps_tensors_and_decodes_metadata(tmp_path):
    path = tmp_path / "a.safetensors"
    tensors = {"x": torch.arange(6.0).view(2, 3), "y": torch.tensor([1, 2], dtype=torch.int64)}
    store.write(path, tensors, store.TRAJECTORY_FORMAT, {"dataset": "mnist", "acc": [0.5, 0.75]})
    stored = store.read(path, store.TRAJECTORY_FORMAT)
    assert stored.format == "ddpp.trajectory/1"
    assert torch.equal(stored.tensors["x"], tensors["x"])
    assert torch.equal(stored.tensors["y"], tensors["y"])
    assert stored.metadata["dataset"] == "mnist"
    assert stored.metadata["acc"] == [0.5, 0.75]
    assert stored.metadata["ddpp_version"] == __version__


def test_header_keeps_format_plain_and_values_as_json(tmp_path):
    path = store.write(
        tmp_path / "a.safetensors", {"x": torch.zeros(1)}, "ddpp.zca/1", {"k": {"a": 1}}
    )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata()
    assert raw["format"] == "ddpp.zca/1"
    assert json.loads(raw["k"]) == {"a": 1}


def test_reserved_metadata_key_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        store.write(
            tmp_path / "a.safetensors", {"x": torch.zeros(1)}, "ddpp.zca/1", {"format": "x"}
        )


def test_wrong_format_is_a_clear_error(tmp_path):
    path = store.write(tmp_path / "a.safetensors", {"x": torch.zeros(1)}, store.ZCA_FORMAT, {})
    with pytest.raises(DdppError, match=r"is not a ddpp\.trajectory/1 file"):
        store.read(path, store.TRAJECTORY_FORMAT)


def test_newer_version_of_same_family_names_upgrade(tmp_path):
    path = store.write(tmp_path / "a.safetensors", {"x": torch.zeros(1)}, "ddpp.trajectory/9", {})
    with pytest.raises(DdppError, match="upgrade ddpp"):
        store.read(path, store.TRAJECTORY_FORMAT)


def test_foreign_safetensors_without_format_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(DdppError, match="no ddpp format tag"):
        store.read(path, store.TRAJECTORY_FORMAT)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x10\x00\x00\x00"])
def test_garbage_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(DdppError, match="not a readable safetensors file"):
        store.read(path, store.TRAJECTORY_FORMAT)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = store.write(tmp_path / "a.safetensors", {"x": torch.randn(1000)}, store.ZCA_FORMAT, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DdppError):
        store.read(path, store.ZCA_FORMAT)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DdppError, match="does not exist"):
        store.read(tmp_path / "nope.safetensors", store.ZCA_FORMAT)


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "f.safetensors"
    store.write(path, {"x": torch.ones(3)}, store.ZCA_FORMAT, {})
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(KeyboardInterrupt):
        store.write(path, {"x": torch.zeros(3)}, store.ZCA_FORMAT, {})
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = store.write(tmp_path / "a.safetensors", {"x": torch.zeros(1)}, store.ZCA_FORMAT, {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / ".expert_0001.safetensors.abc.tmp").write_bytes(b"partial")
    (tmp_path / "expert_0000.safetensors").write_bytes(b"keep")
    assert store.remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["expert_0000.safetensors"]


def test_describe_difference_lists_each_changed_setting_once_sorted():
    old = {"lr": 0.01, "arch": "convnet", "zca": True}
    new = {"lr": 0.02, "arch": "convnet", "seed": 1}
    assert store.describe_difference(old, new) == (
        "lr: 0.01 there vs 0.02 now; seed: None there vs 1 now; zca: True there vs None now"
    )
    assert store.describe_difference(old, dict(old)) == ""


def test_read_shapes_reads_the_header_and_checks_the_format(tmp_path):
    path = store.write(
        tmp_path / "t.safetensors",
        {"params": torch.zeros(3, 5), "lr": torch.zeros(())},
        store.TRAJECTORY_FORMAT,
        {},
    )
    assert store.read_shapes(path, store.TRAJECTORY_FORMAT) == {"params": (3, 5), "lr": ()}
    with pytest.raises(DdppError, match=r"is not a ddpp\.zca/1 file"):
        store.read_shapes(path, store.ZCA_FORMAT)


def test_force_replaces_regular_files_only(tmp_path):
    regular = tmp_path / "set.safetensors"
    regular.write_bytes(b"x")
    store.refuse_existing(regular, force=True)  # replaced by the write that follows
    with pytest.raises(DdppError, match="already exists; pass --force"):
        store.refuse_existing(regular)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    for path, kind in ((fifo, "a FIFO"), (folder, "a folder"), (Path("/dev/null"), "a character")):
        for force in (False, True):
            with pytest.raises(DdppError, match=f"exists and is {kind}.*regular files only"):
                store.refuse_existing(path, force=force)
    link = tmp_path / "link.safetensors"
    link.symlink_to("/dev/null")  # the link is replaced, never the device it names
    store.refuse_existing(link, force=True)
    with pytest.raises(DdppError, match="a file where a folder is needed"):
        store.refuse_existing(regular / "x.safetensors", force=True)
