"""CAFE+DSA (``--method cafe-dsa``): the record and its compare row, one image step's loss and
image gradient against a hand computation (Siamese DSA per class, written out), the draws (one
per class shared by its real and synthetic images, per-sample in the inner epochs, none for the
monitor), and the command end to end with a bit-for-bit resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run, ctrl_c_after
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import cafe, distill, models, published
from ddpp_cli.engine.augment import DEFAULT_STRATEGY, DSA
from ddpp_cli.engine.compare.rows import ROWS, parse_rows
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.errors import DdppError

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES, IPC, BATCH_REAL, SIZE = 3, 2, 4, 8


# ----------------------------------------------------------------------------- the record


def test_the_record_is_registered_after_cafe_with_dsa_and_cafes_settings():
    methods = distill.list_methods()
    assert methods.index("cafe-dsa") == methods.index("cafe") + 1
    record, plain = distill.get_method("cafe-dsa"), distill.get_method("cafe")
    assert (record.label, record.matching_dsa, plain.matching_dsa) == ("CAFE+DSA", True, False)
    assert record.preset_source == "CAFE distill.py --method DSA"
    assert record.preset("fashionmnist", 1, False) == plain.preset("fashionmnist", 1, False)
    assert (record.settings, record.needed) == (plain.settings, plain.needed)
    assert record.step is plain.step
    config = distill.DistillConfig.from_preset("fashionmnist", 1, method="cafe-dsa")
    assert config.matching_dsa == DEFAULT_STRATEGY == "color_crop_cutout_flip_scale_rotate"
    plain_config = distill.DistillConfig.from_preset("fashionmnist", 1, method="cafe")
    assert plain_config.matching_dsa == "none"
    assert (record.quick_budget, dict(record.quick_cuts)) == (
        3, {"batch_real": 64, "max_image_steps": 10, "max_inner_epochs": 5},
    )  # fmt: skip


def test_the_compare_row_and_its_published_figures():
    row = ROWS["cafe-dsa"]
    assert (row.label, row.method, row.kind, row.paper, row.quick) == (
        "CAFE+DSA", "cafe-dsa", "matching", 2000, 3,
    )  # fmt: skip
    assert parse_rows("random,cafe-dsa") == ("random", "cafe-dsa")
    # docs/published.md: CAFE+DSA's figures on cafe-dsa's row, CAFE's on cafe's.
    assert published.reference("fashionmnist", 1, "cafe-dsa").accuracy == 73.7
    assert published.reference("cifar10", 10, "cafe-dsa").accuracy == 50.9
    assert published.reference("fashionmnist", 1, "cafe").accuracy == 77.1


def test_the_arch_check_names_the_method_asked_for():
    with pytest.raises(DdppError, match="--method cafe-dsa aligns the features"):
        distill.DistillConfig.from_preset("mnist", 1, method="cafe-dsa", arch="vgg11")


# ----------------------------------------------------------------------------- one image step


def tiny_problem(seed: int = 0):
    """Three classes of 3×8×8 real images (6 each), a ConvNet-3 and 2 synthetic images a class."""
    generator = torch.Generator().manual_seed(seed)
    pools = [torch.randn(6, 3, SIZE, SIZE, generator=generator) + c for c in range(CLASSES)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = models.create("convnet-d3", 3, CLASSES, SIZE)
    syn = torch.randn(CLASSES * IPC, 3, SIZE, SIZE, generator=generator).requires_grad_(True)
    return network, pools, syn, torch.arange(CLASSES).repeat_interleave(IPC)


def hand_draw(generator: torch.Generator) -> dict:
    """One shared draw of strategy ``color_flip`` as DSA draws it: the op, then its values."""
    op = ("color", "flip")[int(torch.randint(2, (1,), generator=generator))]
    if op == "color":
        brightness = float(torch.rand(1, generator=generator)) - 0.5
        saturation = float(torch.rand(1, generator=generator)) * 2.0
        contrast = float(torch.rand(1, generator=generator)) + 0.5
        return {"op": op, "values": (brightness, saturation, contrast)}
    return {"op": op, "values": (float(torch.rand(1, generator=generator)) < 0.5,)}


def hand_augment(x: torch.Tensor, draw: dict) -> torch.Tensor:
    """The draw applied to every image of ``x`` (brightness, saturation, contrast; or a mirror)."""
    if draw["op"] == "flip":
        return x.flip(3) if draw["values"][0] else x
    brightness, saturation, contrast = draw["values"]
    x = x + brightness
    x = (x - x.mean(dim=1, keepdim=True)) * saturation + x.mean(dim=1, keepdim=True)
    return (x - x.mean(dim=(1, 2, 3), keepdim=True)) * contrast + x.mean(
        dim=(1, 2, 3), keepdim=True
    )


def block_outputs(network, x: torch.Tensor) -> list[torch.Tensor]:
    """The ReLU output of each of the three blocks and the map after the last pool."""
    kept = []
    for index, module in enumerate(network.features):  # [conv, norm, relu, pool] × 3
        x = module(x)
        if index in (2, 6, 10, 11):
            kept.append(x)
    return kept


def hand_loss(network, real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
    """CAFE's loss from per-class batches, written from the formula with plain torch."""
    real_layers = [block_outputs(network, r) for r in real]
    syn_layers = [block_outputs(network, s) for s in syn]
    total = torch.zeros(())
    for layer, weight in enumerate((0.1, 0.1, 1.0, 1.0)):
        for c in range(CLASSES):
            gap = real_layers[c][layer].mean(0) - syn_layers[c][layer].mean(0)
            total = total + weight * (gap**2).sum()
    syn_means = torch.stack([layers[3].flatten(1).mean(0) for layers in syn_layers])
    for c in range(CLASSES):
        real_e = real_layers[c][3].flatten(1)
        total = total + ((real_e.mean(0) - syn_means[c]) ** 2).sum()  # embedding term
        log_probs = torch.log_softmax(real_e @ syn_means.t(), dim=1)
        total = total - 0.01 * log_probs[:, c].sum()  # discrimination, summed over R
    return total


def test_one_image_step_is_the_hand_computed_loss_and_gradient_under_siamese_dsa():
    network, pools, syn, labels = tiny_problem()
    start = syn.detach().clone()
    optimizer = torch.optim.SGD([syn], lr=1.0)  # the step is minus the gradient
    # A window of 1 with λ1 = 1: the first monitor value ends the iteration (no inner epochs).
    settings = cafe.CafeSettings(
        batch_real=BATCH_REAL, monitor_per_class=3, window=1, lambda_1=1.0,
        dsa_strategy="color_flip",
    )  # fmt: skip
    result = cafe.cafe_iteration(
        network, syn, labels, optimizer, pools, settings, make_generator(0, "cafe-dsa")
    )
    assert (result.image_steps, result.inner_epochs) == (1, 0)

    replay = make_generator(0, "cafe-dsa")
    real = [pool[torch.randperm(len(pool), generator=replay)[:BATCH_REAL]] for pool in pools]
    draws = [hand_draw(replay) for _ in range(CLASSES)]  # one per class, after the real batches
    assert len({(d["op"], d["values"]) for d in draws}) == CLASSES  # each class its own draw
    ref = start.clone().requires_grad_(True)
    syn_by_class = [ref[IPC * c : IPC * (c + 1)] for c in range(CLASSES)]
    expected = hand_loss(
        network,
        [hand_augment(r, d) for r, d in zip(real, draws, strict=True)],  # the same draw for
        [hand_augment(s, d) for s, d in zip(syn_by_class, draws, strict=True)],  # both sides
    )
    (grad,) = torch.autograd.grad(expected, ref)
    assert result.loss == pytest.approx(expected.item(), rel=1e-5)
    assert grad.abs().max() > 0
    torch.testing.assert_close(start - syn.detach(), grad, rtol=1e-4, atol=1e-6)
    # Without the draws (plain CAFE's loss) the step would differ: DSA is really applied.
    plain = hand_loss(network, real, syn_by_class)
    assert abs(plain.item() - expected.item()) > 1e-3 * abs(expected.item())


def record_draws(monkeypatch) -> tuple[list, list]:
    """Spy on DSA: every draw's batch size, and every shared application (draw, batch size)."""
    sampled, shared = [], []
    sample, apply_shared = DSA.sample, DSA.apply_shared

    def spy_sample(self, batch, height, width, generator):
        params = sample(self, batch, height, width, generator)
        sampled.append((batch, params))
        return params

    def spy_apply_shared(self, x, params):
        shared.append((params, x.shape[0]))
        return apply_shared(self, x, params)

    monkeypatch.setattr(DSA, "sample", spy_sample)
    monkeypatch.setattr(DSA, "apply_shared", spy_apply_shared)
    return sampled, shared


def test_a_class_shares_one_draw_classes_differ_inner_epochs_augment_per_sample(monkeypatch):
    network, pools, syn, labels = tiny_problem(1)
    sampled, shared = record_draws(monkeypatch)
    optimizer = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    # λ1 = 1 ends the outer loop once its window (2) is full, λ2 = −1 each inner phase once its
    # window is full: step, 2 epochs, step.
    settings = cafe.CafeSettings(
        batch_real=BATCH_REAL, monitor_per_class=3, window=2, lambda_1=1.0, lambda_2=-1.0,
        dsa_strategy="color",
    )  # fmt: skip
    result = cafe.cafe_iteration(
        network, syn, labels, optimizer, pools, settings, make_generator(1, "cafe-dsa")
    )
    assert (result.image_steps, result.inner_epochs) == (2, 2)
    # Each image step: one shared (batch-1) draw per class; each inner epoch: one per-sample
    # draw for its one minibatch of all 6 synthetic images; the monitor draws none.
    assert [batch for batch, _ in sampled] == [1] * CLASSES + [6, 6] + [1] * CLASSES
    # Siamese: each class's draw goes to its real batch then to its synthetic images, nothing
    # else; the classes' draws differ.
    step_draws = [params for batch, params in sampled if batch == 1]
    expected = [(p, n) for p in step_draws for n in (BATCH_REAL, IPC)]
    assert [(id(p), n) for p, n in shared] == [(id(p), n) for p, n in expected]
    first_step = [float(p.values["brightness"]) for p in step_draws[:CLASSES]]
    assert len(set(first_step)) == CLASSES
    per_sample = sampled[CLASSES][1].values["brightness"]
    assert per_sample.shape == (6,) and len(set(per_sample.tolist())) == 6


def test_plain_cafe_draws_nothing(monkeypatch):
    network, pools, syn, labels = tiny_problem(1)
    sampled, shared = record_draws(monkeypatch)
    settings = cafe.CafeSettings(
        batch_real=BATCH_REAL, monitor_per_class=3, window=2, lambda_1=1.0, lambda_2=-1.0,
    )  # fmt: skip
    optimizer = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
    cafe.cafe_iteration(network, syn, labels, optimizer, pools, settings, make_generator(1, "c"))
    assert sampled == [] and shared == []


# ----------------------------------------------------------------------------- the command


def small(**changes) -> distill.DistillConfig:
    """Three cafe-dsa iterations on 8×8 images, 4 real images per class, loops capped at 2."""
    values = {
        "iterations": 3, "image_size": 8, "batch_real": 4, "eval_every": 2, "eval_runs": 1,
        "eval_epochs": 1, "test_runs": 0, "checkpoint_every": 1, "max_image_steps": 2,
        "max_inner_epochs": 2, **changes,
    }  # fmt: skip
    return distill.DistillConfig.from_preset("mnist", 1, method="cafe-dsa", **values)


@pytest.mark.slow
def test_distill_cafe_dsa_runs_end_to_end(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [str(a) for a in (
            "distill", "--dataset", "mnist", "--ipc", 1, "--method", "cafe-dsa", "--data-dir",
            tiny_mnist, "--no-download", "--out", out, "--image-size", 8, "--batch-real", 4,
            "--iterations", 1, "--max-image-steps", 2, "--max-inner-epochs", 2, "--eval-every",
            1, "--eval-runs", 1, "--eval-epochs", 1, "--test-runs", 0, "--quiet",
        )],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / distill.METRICS_NAME).read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1]
    assert records[1]["image_steps"] == 2 and records[1]["capped"] is True
    summary = json.loads((out / distill.SUMMARY_NAME).read_text())
    assert summary["method"] == "cafe-dsa"


@pytest.mark.slow
def test_ctrl_c_and_resume_continue_bit_for_bit(tiny_mnist, tmp_path: Path):
    config = small()
    distill.distill(config, tmp_path / "straight", data_root=tiny_mnist, download=False)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        distill.distill(
            config, interrupted, data_root=tiny_mnist, download=False, on_event=ctrl_c_after(3)
        )
    events: list = []
    distill.distill(
        config, interrupted, data_root=tiny_mnist, download=False, on_event=events.append
    )
    started = next(e for e in events if isinstance(e, distill.DistillStarted))
    assert started.resumed and started.start_iteration == 2
    assert_same_run(tmp_path / "straight", interrupted)
