"""The distillation engine (docs/distill.md): presets, the unroll's gradients, the run folder,
resume, the divergence guard and the checks on its inputs.
Runs on a tiny 8×8 MNIST-format buffer."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_run, ctrl_c_after

from ddpp_cli.engine import distill, distilled, models, presets, store
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.distill import DistillConfig, plan_unroll, unroll
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.functional import ParamLayout, flat_parameters, load_flat
from ddpp_cli.engine.pruning import matching_loss, prune_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**overrides) -> DistillConfig:
    values = dict(
        syn_steps=2, expert_epochs=1, max_start_epoch=2, iterations=4, batch_syn=5,
        eval_every=0, test_runs=0, lr_lr=1e-7,
    )  # fmt: skip
    values.update(overrides)
    return DistillConfig.from_preset("mnist", 1, **values)


def run(config: DistillConfig, folder: Path, buffer: Path, data_root: Path, **kwargs):
    return distill.distill(
        config, folder, buffer=buffer, data_root=data_root, download=False, **kwargs
    )


def metrics(folder: Path) -> list[dict]:
    lines = (folder / distill.METRICS_NAME).read_text().splitlines()
    return [json.loads(line) for line in lines]


# ------------------------------------------------------------------------------- presets


def test_presets_follow_the_spec_table():
    assert presets.resolve("cifar10", 10) == {
        "syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "batch_syn": None,
        "zca": True, "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.001,
    }  # fmt: skip
    assert presets.resolve("cifar10", 1)["lr_lr"] == 1e-7
    assert presets.resolve("cifar10", 50)["zca"] is False
    assert presets.resolve("cifar100", 50)["batch_syn"] == 125
    assert presets.resolve("cifar100", 1)["expert_epochs"] == 3
    assert presets.resolve("tinyimagenet", 10)["batch_syn"] == 200
    assert presets.resolve("tinyimagenet", 1)["syn_steps"] == 10
    other = presets.resolve("fashion-mnist", 7)  # no paper row: the step sizes are derived
    assert other == {
        "syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 10, "batch_syn": None,
        "zca": False, "lr_img": 100.0, "lr_lr": None, "lr_teacher": None,
    }  # fmt: skip
    assert presets.resolve("cifar10", 20)["max_start_epoch"] == 20  # closest listed IPC: 10
    assert presets.has_paper_row("cifar100") and not presets.has_paper_row("svhn")
    derived = presets.resolve("cifar10", 1, derive=True)
    assert (derived["lr_lr"], derived["lr_teacher"], derived["lr_img"]) == (None, None, 100.0)


def test_from_preset_fills_only_unset_values():
    config = DistillConfig.from_preset("cifar10", 10, lr_img=50.0, syn_steps=None)
    assert (config.lr_img, config.syn_steps, config.max_start_epoch) == (50.0, 30, 20)
    assert config.zca is None and config.preset_zca() is True


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"ipc": 0}, "--ipc must be at least 1"),
        ({"eps": 1.0}, "--eps must be in [0, 1)"),
        ({"eps": -0.1}, "--eps must be in [0, 1)"),
        ({"lr_img": float("nan")}, "--lr-img"),
        ({"init": "zeros"}, "--init"),
        ({"syn_steps": 0}, "--syn-steps"),
        ({"arch": "convnet9"}, "unknown architecture"),
        ({"unroll": "tesla"}, "--unroll must be one of: graph, memory"),
        ({"amp": "fp16"}, "--amp must be one of: off, bf16"),
    ],
)
def test_config_validation(overrides, fragment):
    values = {"ipc": 1, "syn_steps": 2, **overrides}
    with pytest.raises(DdppError, match=re.escape(fragment)):
        DistillConfig.from_preset("mnist", **values)


# ------------------------------------------------------------------------ the student unroll


def tiny_problem(dtype=torch.float64):
    torch.manual_seed(0)
    model = models.ConvNet(1, 3, (8, 8), depth=2, width=4).to(dtype).train()
    layout = ParamLayout.of(model)
    generator = torch.Generator().manual_seed(1)
    start = flat_parameters(model)
    noise = torch.randn(start.shape, generator=generator, dtype=dtype)
    target = start + 0.3 * start.abs().mean() * noise
    images = torch.randn(6, 1, 8, 8, generator=generator, dtype=dtype)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return model, layout, start, target, images, labels


def test_unroll_equals_plain_sgd_on_the_module():
    model, layout, start, _, images, labels = tiny_problem()
    dsa = DSA("none")
    steps = plan_unroll(6, 3, 4, dsa, (8, 8), make_generator(0, "t"))
    lr = torch.tensor(0.05, dtype=torch.float64)
    end = unroll(model, layout, start, images, labels, lr, steps, dsa)
    load_flat(model, start)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in steps:
        optimizer.zero_grad()
        F.cross_entropy(model(images[step.indices]), labels[step.indices]).backward()
        optimizer.step()
    assert torch.allclose(end, flat_parameters(model), atol=1e-12)
    assert [len(s.indices) for s in steps] == [4, 2, 4]  # shuffled chunks of X, as MTT


def test_gradient_matches_finite_differences():
    """d L / d images and d L / d α through 2 unroll steps (DSA on, recorded draws), float64,
    against central differences: α, 24 single pixels and 3 random directions."""
    model, layout, start, target, images, labels = tiny_problem()
    dsa = DSA()
    steps = plan_unroll(6, 2, 4, dsa, (8, 8), make_generator(3, "t"))
    lr = torch.tensor(0.1, dtype=torch.float64)
    end = unroll(model, layout, start, images, labels, lr, steps, dsa).detach()
    mask = prune_mask(end, target, 0.1)
    assert 0 < int((~mask).sum()) < mask.numel()  # something is pruned

    def loss(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        final = unroll(model, layout, start, x, labels, alpha, steps, dsa)
        return matching_loss(final, target, start, mask)

    x, alpha = images.clone().requires_grad_(True), lr.clone().requires_grad_(True)
    grad_x, grad_alpha = torch.autograd.grad(loss(x, alpha), (x, alpha))
    h = 1e-6
    with torch.no_grad():
        numeric_alpha = (loss(images, lr + h) - loss(images, lr - h)) / (2 * h)
        assert float(grad_alpha) == pytest.approx(float(numeric_alpha), rel=1e-6, abs=1e-9)
        generator = torch.Generator().manual_seed(5)
        pixels = torch.randperm(images.numel(), generator=generator)[:24].tolist()
        directions = [torch.zeros(images.numel(), dtype=torch.float64) for _ in pixels]
        for direction, pixel in zip(directions, pixels, strict=True):
            direction[pixel] = 1.0
        directions += [torch.randn(images.numel(), generator=generator, dtype=torch.float64)
                       for _ in range(3)]  # fmt: skip
        for direction in directions:
            u = direction.view_as(images)
            numeric = (loss(images + h * u, lr) - loss(images - h * u, lr)) / (2 * h)
            analytic = (grad_x * u).sum()
            assert float(analytic) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)
    assert grad_x.abs().sum() > 0


# ------------------------------------------------------------------------------ whole runs


def test_run_writes_the_run_folder(tiny_buffer, tiny_mnist, tmp_path):
    events = []
    config = small_config(eval_every=2, eval_runs=1, eval_epochs=2, test_runs=1)
    summary = run(config, tmp_path / "run", tiny_buffer, tiny_mnist, on_event=events.append)
    folder = tmp_path / "run"
    for name in ("distilled", "best", "checkpoint", "metrics", "summary"):
        assert (folder / getattr(distill, f"{name.upper()}_NAME")).is_file()

    started = next(e for e in events if isinstance(e, distill.DistillStarted))
    total = started.train_size + started.val_size  # the whole training split
    assert started.val_size == round(0.1 * total) and started.config.val_size == started.val_size
    assert started.config.zca is False

    result = distilled.load(folder / distill.DISTILLED_NAME)
    assert result.images.shape == (10, 1, 8, 8)
    assert result.labels.tolist() == list(range(10))  # class-major, IPC 1
    assert result.lr == pytest.approx(summary.final_lr)
    assert result.preprocessing["kind"] == "normalize"
    assert result.settings["eps"] == 0.1 and result.settings["image_size"] == 8
    assert result.settings["buffer"]["image_size"] == 8

    lines = metrics(folder)
    assert [line["iteration"] for line in lines] == [0, 1, 2, 3, 4]
    for line in lines[1:]:
        assert {"loss", "pruned_fraction", "lr", "start_epoch", "expert", "seconds"} <= set(line)
        assert 0 <= line["pruned_fraction"] < 0.5 and line["start_epoch"] in (0, 1)
    assert [n for n, line in enumerate(lines) if "val_accuracy" in line] == [0, 2, 4]
    assert summary.best_iteration in (0, 2, 4)
    assert summary.test is not None and len(summary.test.accuracies) == 1
    assert summary.test.protocol["test_size"] == started.test_size  # used once, at the end
    assert sum(isinstance(e, distill.TestStarted) for e in events) == 1

    checkpoint = store.read(folder / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    assert checkpoint.metadata["iteration"] == 4
    assert {"images", "lr", "momentum_images", "momentum_lr", "rng_unroll"} <= set(
        checkpoint.tensors
    )
    saved = json.loads((folder / distill.SUMMARY_NAME).read_text())
    assert saved["test"]["accuracies"] == summary.test.accuracies


def test_noise_init_and_plain_mtt(tiny_buffer, tiny_mnist, tmp_path):
    config = small_config(init="noise", eps=0.0, iterations=2)
    run(config, tmp_path, tiny_buffer, tiny_mnist)
    assert all(line["pruned_fraction"] == 0.0 for line in metrics(tmp_path)[1:])


@pytest.fixture(scope="module")
def straight_run(tiny_buffer, tiny_mnist, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("straight")
    run(small_config(iterations=10, eval_every=5, eval_epochs=1, eval_runs=1), folder,
        tiny_buffer, tiny_mnist)  # fmt: skip
    return folder


def test_resume_continues_bit_for_bit(straight_run, tiny_buffer, tiny_mnist, tmp_path):
    config = small_config(iterations=5, eval_every=5, eval_epochs=1, eval_runs=1)
    run(config, tmp_path, tiny_buffer, tiny_mnist)
    events = []
    longer = replace(config, iterations=10, checkpoint_every=3)  # allowed to change
    run(longer, tmp_path, tiny_buffer, tiny_mnist, on_event=events.append)
    started = next(e for e in events if isinstance(e, distill.DistillStarted))
    assert started.resumed and started.start_iteration == 5
    assert_same_run(straight_run, tmp_path)
    assert len(metrics(tmp_path)) == 11  # iterations 0-10


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_matches(
    straight_run, tiny_buffer, tiny_mnist, tmp_path
):
    config = small_config(iterations=10, eval_every=5, eval_epochs=1, eval_runs=1)

    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, tiny_buffer, tiny_mnist, on_event=ctrl_c_after(7))
    saved = store.read(tmp_path / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    assert saved.metadata["iteration"] == 6  # the last completed iteration
    assert distilled.load(tmp_path / distill.DISTILLED_NAME).settings["iteration"] == 6
    run(config, tmp_path, tiny_buffer, tiny_mnist)
    assert_same_run(straight_run, tmp_path)
    assert len(metrics(tmp_path)) == 11  # iterations 0-10


@pytest.mark.slow
def test_memory_mode_run_matches_the_graph_mode(straight_run, tiny_buffer, tiny_mnist, tmp_path):
    """A whole run with --unroll memory: same draws, same losses and images up to rounding; the
    mode is stored with the run and may be switched on resume (it is the same maths)."""
    config = small_config(iterations=10, eval_every=5, eval_epochs=1, eval_runs=1, unroll="memory")
    run(replace(config, iterations=4), tmp_path, tiny_buffer, tiny_mnist)
    saved = store.read_metadata(tmp_path / distill.CHECKPOINT_NAME)["config"]
    assert saved["unroll"] == "memory"
    assert distill.saved_config(tmp_path).unroll == "memory"
    run(config, tmp_path, tiny_buffer, tiny_mnist)
    assert distill.saved_config(tmp_path).unroll == "memory"
    graph, memory = metrics(straight_run), metrics(tmp_path)
    keys = ("expert", "start_epoch")
    assert [[m.get(k) for k in keys] for m in memory] == [[g.get(k) for k in keys] for g in graph]
    # Equal up to rounding, which lr_img = 100 amplifies, until a mask entry flips (iteration 5).
    for g, m in zip(graph[1:5], memory[1:5], strict=True):
        assert m["loss"] == pytest.approx(g["loss"], rel=1e-4)
        assert m["pruned_fraction"] == g["pruned_fraction"]
    assert all(math.isfinite(m["loss"]) for m in memory[1:])
    b = distilled.load(tmp_path / distill.DISTILLED_NAME)
    assert b.settings["unroll"] == "memory"


def test_old_checkpoints_load_as_graph_mode(straight_run, tmp_path):
    shutil.copytree(straight_run, tmp_path / "old")
    path = tmp_path / "old" / distill.CHECKPOINT_NAME
    stored = store.read(path, store.CHECKPOINT_FORMAT)
    meta = dict(stored.metadata)
    meta["config"] = {
        k: v
        for k, v in meta["config"].items()
        if k not in ("unroll", "amp", "compile", "channels_last")
    }
    for key in ("format", "ddpp_version"):
        meta.pop(key, None)
    store.write(path, stored.tensors, store.CHECKPOINT_FORMAT, meta)
    config = distill.saved_config(tmp_path / "old")
    assert (config.unroll, config.amp, config.compile, config.channels_last) == (
        "graph",
        "off",
        False,
        False,
    )


def test_resume_with_other_settings_is_refused(straight_run, tiny_buffer, tiny_mnist):
    config = small_config(iterations=10, eval_every=5, eval_epochs=1, eval_runs=1, lr_img=5.0)
    with pytest.raises(DdppError, match=r"other settings .*lr_img: 100\.0 there vs 5\.0 now"):
        run(config, straight_run, tiny_buffer, tiny_mnist)


def test_forced_nan_stops_with_the_last_good_set(tiny_buffer, tiny_mnist, tmp_path):
    config = small_config(lr_img=1e30, iterations=20)
    with pytest.raises(distill.DivergedError) as caught:
        run(config, tmp_path, tiny_buffer, tiny_mnist)
    error = caught.value
    assert "diverged" in str(error) and str(error.distilled) in str(error)
    last_good = distilled.load(error.distilled)
    assert torch.isfinite(last_good.images).all()
    assert last_good.lr is not None and last_good.lr > 0
    assert metrics(tmp_path)[-1]["diverged"]


# ---------------------------------------------------------------------------- bad inputs


def test_ipc_above_the_smallest_class_is_refused(tiny_buffer, tiny_mnist, tmp_path):
    config = DistillConfig.from_preset(
        "mnist", 500, syn_steps=2, expert_epochs=1, max_start_epoch=2
    )
    with pytest.raises(DdppError, match=r"--ipc 500 is more than class .* \(\d+ training images"):
        run(config, tmp_path, tiny_buffer, tiny_mnist)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_start_epoch": 3, "expert_epochs": 2}, "needs experts of at least 4 epochs"),
        ({"arch": "convnet-d3"}, "made with architecture 'convnet', not 'convnet-d3'"),
        ({"zca": True}, "is normalised but --zca was given"),
    ],
)
def test_buffer_mismatch_is_refused(tiny_buffer, tiny_mnist, tmp_path, overrides, fragment):
    with pytest.raises(DdppError, match=fragment):
        run(small_config(**overrides), tmp_path, tiny_buffer, tiny_mnist)


def test_buffer_of_another_dataset_is_refused(tiny_buffer, tiny_mnist, tmp_path):
    config = DistillConfig.from_preset("fashionmnist", 1, expert_epochs=1, max_start_epoch=2)
    with pytest.raises(DdppError, match="made for dataset 'mnist', not 'fashionmnist'"):
        run(config, tmp_path, tiny_buffer, tiny_mnist)


def test_missing_buffer_names_the_command(tmp_path):
    with pytest.raises(DdppError, match="'ddpp buffer --dataset mnist --arch convnet'"):
        distill.find_buffer(small_config())
    with pytest.raises(DdppError, match=f"--out {tmp_path / 'nope'}"):
        distill.find_buffer(small_config(), tmp_path / "nope")
    cifar = DistillConfig.from_preset("cifar10", 50)
    with pytest.raises(DdppError, match="--dataset cifar10 --arch convnet --no-zca'"):
        distill.find_buffer(cifar)


def test_damaged_expert_file_is_refused(tiny_buffer, tiny_mnist, tmp_path):
    buffer = tmp_path / "buffer"
    shutil.copytree(tiny_buffer, buffer)
    damaged = buffer / "expert_0001.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(DdppError, match=r"expert_0001\.safetensors"):
        run(small_config(), tmp_path / "run", buffer, tiny_mnist)


def test_the_buffers_recorded_normalization_is_what_distillation_uses(
    tiny_buffer, tiny_mnist, tmp_path
):
    # An imported MTT buffer records the mean/std its experts saw (e.g. CIFAR-10's for CIFAR-100
    # without ZCA); distillation must prepare the data with exactly those, not the table's.
    buffer = tmp_path / "buffer"
    shutil.copytree(tiny_buffer, buffer)
    manifest_path = buffer / "buffer.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["preprocessing"]["kind"] == "normalize"
    manifest["preprocessing"] = {"kind": "normalize", "mean": [0.5], "std": [0.25]}
    manifest_path.write_text(json.dumps(manifest))
    run(small_config(iterations=1, init="noise"), tmp_path / "run", buffer, tiny_mnist)
    result = distilled.load(tmp_path / "run" / distill.DISTILLED_NAME)
    assert result.preprocessing == {"kind": "normalize", "mean": [0.5], "std": [0.25]}
