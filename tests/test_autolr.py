"""Derived step sizes for datasets without a paper row (engine/autolr.py, issue 14): the pure
formulas on hand-made inputs, the derivation at the start of a run on the tiny 8×8 MNIST buffer,
and the divergence message when α is driven below zero."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import test_distill
from test_distill import run

from ddpp_cli.engine import autolr, distill, presets
from ddpp_cli.engine.distill import DistillConfig

tiny_buffer = test_distill.tiny_buffer  # the 8×8 MNIST buffer fixture
pytestmark = pytest.mark.usefixtures("one_thread")


def test_steps_per_epoch_rounds_up():
    assert autolr.steps_per_epoch(1400, 256) == 6
    assert autolr.steps_per_epoch(50000, 256) == 196
    assert autolr.steps_per_epoch(256, 256) == 1
    assert autolr.steps_per_epoch(0, 256) == 1


def test_teacher_lr_keeps_the_student_within_the_experts_travel():
    # 1,400 images at batch 256: M·S = 2·6 = 12 expert steps for N = 20 student steps.
    assert autolr.teacher_lr(0.01, 2, 6, 20) == pytest.approx(0.006)
    # CIFAR-sized: 2·196 ≫ 50, so the expert's lr itself (the paper's choice).
    assert autolr.teacher_lr(0.01, 2, 196, 50) == 0.01
    assert autolr.teacher_lr(0.02, 1, 5, 20) == pytest.approx(0.005)


def test_lr_lr_makes_the_first_alpha_step_a_fixed_share_of_alpha():
    assert autolr.ALPHA_STEP == 0.01
    assert autolr.lr_lr_from_gradient(0.01, 500.0) == pytest.approx(2e-7)
    assert autolr.lr_lr_from_gradient(0.01, -500.0) == pytest.approx(2e-7)  # sign-free
    assert autolr.lr_lr_from_gradient(0.006, 30.0, step=0.1) == pytest.approx(2e-5)
    # Scale-free: ten times the gradient, a tenth of the learning rate, the same α step.
    for grad in (3.0, 30.0, 3000.0):
        lr_lr = autolr.lr_lr_from_gradient(0.004, grad)
        assert lr_lr * grad == pytest.approx(0.01 * 0.004)


def test_probe_epochs_spread_over_the_start_range():
    assert autolr.probe_epochs(10) == (0, 4, 9)
    assert autolr.probe_epochs(3) == (0, 1, 2)
    assert autolr.probe_epochs(2) == (0, 1)
    assert autolr.probe_epochs(1) == (0,)
    assert autolr.probe_epochs(10, count=1) == (0,)


def test_divergence_advice_names_the_setting_that_moved_alpha():
    config = SimpleNamespace(lr_lr=1e-5, lr_img=100.0, lr_teacher=0.01)
    advice = autolr.divergence_advice(-0.0006, config)
    assert "--lr-lr (now 1e-05)" in advice and "try --lr-lr 1e-06" in advice
    assert "--lr-img" not in advice
    for lr in (float("nan"), 0.005):  # α fine or not a number: the images' or start lr's fault
        advice = autolr.divergence_advice(lr, config)
        assert "--lr-img (now 100)" in advice and "--lr-teacher (now 0.01)" in advice
    fixed = SimpleNamespace(lr_lr=0.0, lr_img=100.0, lr_teacher=0.01)
    assert "--lr-lr" not in autolr.divergence_advice(-1.0, fixed)


# ------------------------------------------------------------------- in a run (tiny buffer)


def small(**overrides) -> DistillConfig:
    values = dict(
        syn_steps=4, expert_epochs=1, max_start_epoch=2, iterations=2, batch_syn=5,
        eval_every=0, test_runs=0,
    )  # fmt: skip
    values.update(overrides)
    return DistillConfig.from_preset("mnist", 1, **values)


def test_a_run_derives_the_open_step_sizes_and_reports_how(tiny_buffer, tiny_mnist, tmp_path):
    config = small()
    assert (config.lr_teacher, config.lr_lr) == (None, None)  # mnist has no paper row
    events = []
    run(config, tmp_path, tiny_buffer, tiny_mnist, on_event=events.append)
    started = next(e for e in events if isinstance(e, distill.DistillStarted))
    manifest = json.loads((tiny_buffer / "buffer.json").read_text())
    epoch_steps = autolr.steps_per_epoch(manifest["data"]["train_size"], 64)
    expected = autolr.teacher_lr(0.01, 1, epoch_steps, 4)
    assert started.config.lr_teacher == pytest.approx(expected)
    assert 0 < started.config.lr_lr < math.inf
    assert started.derived["lr_teacher"].startswith("derived: expert lr 0.01 × min(1, M·S/N")
    assert started.derived["lr_lr"].startswith("derived: 0.01·α₀/|∂L/∂α|")
    first = json.loads((tmp_path / distill.METRICS_NAME).read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(expected)
    # The checkpoint holds the derived values; rerunning the open config resumes it.
    saved = distill.saved_config(tmp_path)
    assert (saved.lr_teacher, saved.lr_lr) == (started.config.lr_teacher, started.config.lr_lr)
    summary = run(small(iterations=3), tmp_path, tiny_buffer, tiny_mnist)
    assert summary.iterations == 3


def test_given_step_sizes_are_kept(tiny_buffer, tiny_mnist, tmp_path):
    events = []
    config = small(lr_teacher=0.02, lr_lr=1e-6, iterations=1)
    run(config, tmp_path, tiny_buffer, tiny_mnist, on_event=events.append)
    started = next(e for e in events if isinstance(e, distill.DistillStarted))
    assert started.derived == {}
    assert (started.config.lr_teacher, started.config.lr_lr) == (0.02, 1e-6)
    assert presets.resolve("cifar10", 1)["lr_lr"] == 1e-7  # paper rows untouched


def test_alpha_driven_below_zero_stops_naming_lr_lr(tiny_buffer, tiny_mnist, tmp_path):
    config = small(lr_teacher=0.5, lr_lr=10.0, lr_img=1.0, iterations=5)
    with pytest.raises(distill.DivergedError) as caught:
        run(config, tmp_path, tiny_buffer, tiny_mnist)
    message = str(caught.value)
    assert "the learned lr became -" in message
    assert "--lr-lr (now 10)" in message and "try --lr-lr 1" in message
