"""The pieces of the distillation engine on small hand-made tensors: the state's checkpoint
round trip (every field, momentum and generators included), the run folder's files and its
truncation on resume, and the one resume rule (``resume_config``)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from ddpp_cli.engine import distill, store
from ddpp_cli.engine.distill import Best, DistillConfig, DistillState, RunFolder
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.distilled import load as load_set
from ddpp_cli.engine.errors import DdppError

CPU = torch.device("cpu")
OPTIMIZER_LRS = {"lr_img": 10.0, "lr_lr": 1e-3}


def sgd_step(state: DistillState) -> None:
    """A step of both optimizers on a loss that depends on the images and α."""
    state.zero_grad()
    loss = (state.images**2).sum() * state.lr + state.lr**2
    loss.backward()
    state.optimizer_step()


def worked_state() -> DistillState:
    """A state after two optimizer steps and draws from every generator, mid-way in its
    second expert order."""
    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3) / 10
    state = DistillState.start(images, 0.01, [4, 0, 7], seed=3, device=CPU, **OPTIMIZER_LRS)
    for _ in range(2):
        sgd_step(state)
    for _ in range(4):  # past the end of the first order: a reshuffle
        state.next_expert()
    torch.rand(3, generator=state.generators["start"])
    torch.rand(5, generator=state.generators["unroll"])
    state.iteration, state.best, state.elapsed = 6, Best(4, 0.625), 12.5
    return state


def momentum(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    return optimizer.state_dict()["state"][0]["momentum_buffer"]


def write_checkpoint(path: Path, saved: distill.StateDict) -> None:
    store.write(path, saved.tensors, store.CHECKPOINT_FORMAT, saved.meta)


def test_state_round_trip_through_a_checkpoint_file(tmp_path):
    state = worked_state()
    write_checkpoint(tmp_path / "c.safetensors", state.state_dict())
    saved, _ = distill.read_checkpoint(tmp_path / "c.safetensors")
    loaded = DistillState.from_state_dict(saved, device=CPU, **OPTIMIZER_LRS)

    assert torch.equal(loaded.images, state.images) and loaded.images.requires_grad
    assert loaded.images.is_leaf and loaded.lr.is_leaf and loaded.lr.shape == ()
    assert torch.equal(loaded.lr, state.lr) and loaded.lr.requires_grad
    assert torch.equal(momentum(loaded.opt_images), momentum(state.opt_images))
    assert momentum(loaded.opt_lr).shape == () and momentum(state.opt_lr).shape == ()
    assert torch.equal(momentum(loaded.opt_lr), momentum(state.opt_lr))
    assert loaded.opt_images.param_groups[0]["lr"] == 10.0
    assert loaded.opt_lr.param_groups[0]["momentum"] == 0.5
    assert loaded.experts == [0, 4, 7]
    assert torch.equal(loaded.order, state.order) and loaded.position == state.position == 1
    assert (loaded.iteration, loaded.best, loaded.elapsed) == (6, Best(4, 0.625), 12.5)
    for name in distill.GENERATORS:
        assert torch.equal(loaded.generators[name].get_state(), state.generators[name].get_state())
    # Continuing both gives the same draws and, through the momentum, the same updates.
    for copy in (state, loaded):
        sgd_step(copy)
    assert torch.equal(loaded.images, state.images) and torch.equal(loaded.lr, state.lr)
    assert [loaded.next_expert() for _ in range(5)] == [state.next_expert() for _ in range(5)]
    for name in distill.GENERATORS:
        draw = [torch.rand(2, generator=s.generators[name]) for s in (state, loaded)]
        assert torch.equal(*draw)


def test_state_dict_names_and_shapes():
    saved = worked_state().state_dict()
    assert set(saved.tensors) == {
        "images", "lr", "expert_order", "momentum_images", "momentum_lr",
        "rng_experts", "rng_start", "rng_unroll",
    }  # fmt: skip
    assert saved.tensors["lr"].shape == saved.tensors["momentum_lr"].shape == (1,)
    assert saved.tensors["momentum_images"].shape == (2, 1, 3, 3)
    assert saved.meta == {
        "iteration": 6, "expert_position": 1, "experts": [0, 4, 7], "best_iteration": 4,
        "best_val_accuracy": 0.625, "elapsed_seconds": 12.5,
    }  # fmt: skip
    assert (saved.iteration, saved.lr) == (6, pytest.approx(float(saved.tensors["lr"][0])))


def test_a_state_before_its_first_step_has_no_momentum(tmp_path):
    images = torch.zeros(2, 1, 3, 3)
    state = DistillState.start(images, 0.01, [1, 0], seed=0, device=CPU, **OPTIMIZER_LRS)
    saved = state.state_dict()
    assert "momentum_images" not in saved.tensors and "momentum_lr" not in saved.tensors
    write_checkpoint(tmp_path / "c.safetensors", saved)
    loaded = DistillState.from_state_dict(
        distill.read_checkpoint(tmp_path / "c.safetensors")[0], device=CPU, **OPTIMIZER_LRS
    )
    assert loaded.opt_images.state_dict()["state"] == {}
    assert (loaded.iteration, loaded.best) == (0, Best())


def test_a_checkpoint_without_generator_state_is_refused(tmp_path):
    saved = worked_state().state_dict()
    del saved.tensors["rng_start"]
    write_checkpoint(tmp_path / "c.safetensors", saved)
    with pytest.raises(DdppError, match="rng_start"):
        distill.read_checkpoint(tmp_path / "c.safetensors")


# ------------------------------------------------------------------------- the run folder


def as_set(images: torch.Tensor, lr: float, iteration: int) -> DistilledSet:
    return DistilledSet(
        images=images.detach(), labels=torch.tensor([0, 1]), lr=lr, dataset="mnist",
        class_names=("a", "b"), preprocessing={"kind": "normalize", "mean": [0.0], "std": [1.0]},
        settings={"iteration": iteration},
    )  # fmt: skip


def run_folder(folder: Path) -> RunFolder:
    files = RunFolder(folder, as_set, {"labels": torch.tensor([0, 1])}, {"config": {"x": 1}})
    files.create()
    return files


def test_run_folder_writes_checkpoint_sets_and_snapshots(tmp_path):
    files = run_folder(tmp_path / "run")
    saved = worked_state().state_dict()
    files.save_checkpoint(saved)
    stored = store.read(files.checkpoint, store.CHECKPOINT_FORMAT)
    assert torch.equal(stored.tensors["labels"], torch.tensor([0, 1]))
    assert stored.metadata["config"] == {"x": 1} and stored.metadata["iteration"] == 6
    state, _ = distill.read_checkpoint(files.checkpoint)
    assert all(torch.equal(state.tensors[k], saved.tensors[k]) for k in saved.tensors)
    assert state.meta == saved.meta
    current = load_set(files.distilled)
    assert torch.equal(current.images, saved.images) and current.lr == saved.lr
    files.save_best(saved, 0.5, 0.125)
    assert store.read_metadata(files.best)["val_accuracy"] == 0.5
    path = files.save_image_snapshot(saved.images, 0.25, 12)
    assert path == tmp_path / "run" / "snapshots" / "iter_000012.safetensors"
    assert load_set(path).lr == 0.25


def test_metrics_lines_are_fsynced_before_the_checkpoint_that_covers_them(tmp_path, monkeypatch):
    files = run_folder(tmp_path / "run")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    saved = worked_state().state_dict()
    files.log({"iteration": 5, "loss": 1.0})
    files.log({"iteration": 6, "loss": 0.5})
    files.save_checkpoint(saved)
    assert synced[0] == "metrics.jsonl" and synced.count("metrics.jsonl") == 1
    assert any(name.startswith(".checkpoint.safetensors.") for name in synced[1:])
    synced.clear()
    files.save_checkpoint(saved)  # nothing appended since: no second sync
    assert "metrics.jsonl" not in synced


def test_truncate_drops_what_came_after_the_checkpoint(tmp_path):
    files = run_folder(tmp_path / "run")
    for iteration in range(7):
        files.log({"iteration": iteration, "loss": iteration / 2})
    with open(files.metrics, "a", encoding="utf-8") as handle:
        handle.write('{"iteration": 7, "lo')  # torn by a kill
    snapshots = tmp_path / "run" / distill.SNAPSHOTS_DIRNAME
    for name in ("iter_000000", "iter_000003", "iter_000004", "iter_000006", "iter_x"):
        (snapshots / f"{name}.safetensors").parent.mkdir(exist_ok=True)
        (snapshots / f"{name}.safetensors").write_bytes(b"")

    files.truncate(3)
    lines = files.metrics.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"iteration": i, "loss": i / 2} for i in range(4)
    ]
    assert sorted(p.stem for p in snapshots.iterdir()) == ["iter_000000", "iter_000003", "iter_x"]
    files.truncate(0)  # iteration 0's line is redone on resume
    assert files.metrics.read_text(encoding="utf-8") == ""
    assert sorted(p.stem for p in snapshots.iterdir()) == ["iter_000000", "iter_x"]


def test_pruned_stats_and_previous_summary(tmp_path):
    files = run_folder(tmp_path / "run")
    assert files.pruned_stats() == {} and files.previous_summary() is None
    files.log({"iteration": 0, "lr": 0.01})
    for value in (0.25, 0.5, 0.75):
        files.log({"iteration": 1, "pruned_fraction": value})
    assert files.pruned_stats() == {"min": 0.25, "max": 0.75, "mean": 0.5}
    files.summary.write_text("{torn", encoding="utf-8")
    assert files.previous_summary() is None
    files.write_summary({"iterations": 3})
    assert files.previous_summary() == {"iterations": 3}


def test_a_folder_with_run_files_but_no_checkpoint_is_refused(tmp_path):
    distill.files.check_startable(tmp_path / "absent")
    (tmp_path / distill.METRICS_NAME).write_text("", encoding="utf-8")
    with pytest.raises(DdppError, match=r"no checkpoint\.safetensors to resume from"):
        distill.files.check_startable(tmp_path)


def test_a_folder_of_other_files_is_refused_and_an_empty_one_is_not(tmp_path):
    distill.files.check_startable(tmp_path)  # empty
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "grid.png").write_bytes(b"")  # a run's own file is not listed
    with pytest.raises(DdppError, match=r"holds other files \(notes\.txt\), not a ddpp run"):
        distill.files.check_startable(tmp_path)
    with pytest.raises(DdppError, match="is a file, not a run folder"):
        distill.files.check_startable(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------ resume rule


def saved_run(folder: Path, config: DistillConfig, iteration: int) -> Path:
    meta = {"config": asdict(config), "iteration": iteration}
    store.write(folder / distill.CHECKPOINT_NAME, {"x": torch.zeros(1)}, "ddpp.checkpoint/1", meta)
    return folder


def test_resume_config_rule(tmp_path):
    saved = replace(
        DistillConfig.from_preset("mnist", 1, iterations=10), zca=False, train_subset=50,
        val_size=7,
    )  # fmt: skip
    folder = saved_run(tmp_path, saved, iteration=4)
    assert distill.resume_config(folder) == saved
    # Explicit settings: only those given change; the rest is the checkpoint's.
    assert distill.resume_config(folder, {"iterations": 20, "eps": None}) == replace(
        saved, iterations=20
    )
    # A whole config: what the run resolved (zca, train_subset, val_size) is kept when None.
    given = DistillConfig.from_preset("mnist", 1, iterations=12, eval_every=3)
    assert distill.resume_config(folder, given) == replace(
        given, zca=False, train_subset=50, val_size=7
    )
    with pytest.raises(DdppError, match=r"other settings \(eps: 0\.1 there vs 0\.2 now\)"):
        distill.resume_config(folder, {"eps": 0.2})
    with pytest.raises(DdppError, match="already done 4 iterations; --iterations 3 is fewer"):
        distill.resume_config(folder, {"iterations": 3})
    with pytest.raises(DdppError, match=r"no checkpoint\.safetensors"):
        distill.resume_config(tmp_path / "elsewhere")
