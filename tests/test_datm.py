"""tm's labels (DATM, docs/distill.md, Labels (DATM)): the soft-label unroll's gradients against a
hand-written unroll, the teacher labels and image selection on hand-made values, DATM's window
and skip rule, the settings' checks, and whole runs (hard labels unchanged, learned labels
resumed bit for bit, the label mode in the set, summary and JSON)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run, ctrl_c_after
from test_distill import run
from test_distill import small_config as distill_small_config
from torch import nn

from ddpp_cli.engine import distill, distilled, models, presets, store
from ddpp_cli.engine.augment import DSA
from ddpp_cli.engine.device import make_generator
from ddpp_cli.engine.distill import DistillConfig, teacher
from ddpp_cli.engine.distill.step import upper_start_epoch
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.functional import ParamLayout, flat_parameters, functional_forward
from ddpp_cli.engine.presets import DATM_ORIGIN
from ddpp_cli.engine.student import Student, plan_unroll
from ddpp_cli.engine.unroll import match

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the unroll's gradients


def reference_gradients(model, layout, start, target, images, targets, lr, steps):
    """dL/dX, dL/dα, dL/dY of DATM's inner loop written out: θ ← θ − α ∇ −Σ softmax(y)·log
    softmax(f(x; θ)) / B on each step's rows (no DSA), L = ‖θ_N − θ*‖² / ‖θ_0 − θ*‖²."""
    x = images.clone().requires_grad_(True)
    y = targets.clone().requires_grad_(True)
    alpha = torch.tensor(lr, dtype=images.dtype, requires_grad=True)
    theta = start.clone().requires_grad_(True)
    for step in steps:
        rows = step.indices
        logits = functional_forward(model, layout, theta, x[rows])
        weights = torch.exp(y[rows]) / torch.exp(y[rows]).sum(dim=1, keepdim=True)
        log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        loss = -(weights * log_probs).sum() / len(rows)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        theta = theta - alpha * grad
    matching = ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()
    return torch.autograd.grad(matching, (x, alpha, y))


def tiny_soft_problem():
    torch.manual_seed(0)
    model = models.ConvNet(1, 3, (8, 8), depth=2, width=4).double().train()
    layout = ParamLayout.of(model)
    generator = torch.Generator().manual_seed(1)
    start = flat_parameters(model)
    noise = torch.randn(start.shape, generator=generator, dtype=torch.float64)
    target = start + 0.3 * start.abs().mean() * noise
    images = torch.randn(6, 1, 8, 8, generator=generator, dtype=torch.float64)
    targets = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    return model, layout, start, target, images, targets


@pytest.mark.parametrize(("mode", "keep"), [("graph", 0), ("memory", 0), ("memory", 10**9)])
def test_learned_label_gradients_equal_the_written_out_unroll(mode, keep):
    """float64, minibatches of 4 of 6, 5 steps, no pruning: dL/dX, dL/dα and dL/dY of both
    unroll modes (memory: rebuilding every step, or keeping every graph) equal the reference's
    to 1e-10."""
    model, layout, start, target, images, targets = tiny_soft_problem()
    steps = plan_unroll(6, 5, 4, DSA("none"), (8, 8), make_generator(3, "t"))
    expected = reference_gradients(model, layout, start, target, images, targets, 0.1, steps)
    x = images.clone().requires_grad_(True)
    y = targets.clone().requires_grad_(True)
    alpha = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    student = Student(model, layout, DSA("none"))
    match(student, start, target, x, y, alpha, steps, 0.0, mode, keep)
    for found, wanted in zip((x.grad, alpha.grad, y.grad), expected, strict=True):
        assert float(wanted.abs().max()) > 0
        torch.testing.assert_close(found, wanted, rtol=1e-10, atol=1e-10 * wanted.abs().max())


def test_teacher_labels_get_no_gradient_and_equal_the_learned_images_gradient():
    """Fixed label vectors (teacher): no dL/dY, and the same dL/dX as with learned ones."""
    model, layout, start, target, images, targets = tiny_soft_problem()
    steps = plan_unroll(6, 3, 4, DSA("none"), (8, 8), make_generator(4, "t"))
    student = Student(model, layout, DSA("none"))
    grads = []
    for learned in (False, True):
        x = images.clone().requires_grad_(True)
        y = targets.clone().requires_grad_(learned)
        alpha = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        match(student, start, target, x, y, alpha, steps, 0.0, "memory")
        grads.append(x.grad)
        assert (y.grad is None) != learned
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)


# ------------------------------------------------------------------ teacher labels


def test_averaged_correct_logits_average_only_the_correct_experts():
    logits = torch.tensor(
        [
            [[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]],  # expert 0: image 0 → 0 ✓, image 1 → 1 ✗
            [[1.0, 4.0, 0.0], [1.0, 0.0, 5.0]],  # expert 1: image 0 → 1 ✗, image 1 → 2 ✓
            [[6.0, 2.0, 2.0], [0.0, 1.0, 3.0]],  # expert 2: image 0 → 0 ✓, image 1 → 2 ✓
        ]
    )
    labels = torch.tensor([0, 2])
    found = teacher.averaged_correct_logits(logits, labels)
    expected = torch.tensor([[4.0, 1.0, 1.5], [0.5, 0.5, 4.0]])
    assert torch.equal(found, expected)
    with pytest.raises(DdppError, match="no expert classifies"):
        teacher.averaged_correct_logits(logits, torch.tensor([2, 0]))


def linear_expert():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False))
    return model, ParamLayout.of(model)


def test_selection_takes_the_first_correct_images_then_the_next_expert():
    """Pool rows are one-hot-ish inputs; expert 0 (identity) predicts the input's argmax, expert
    1 (a cyclic shift) the next class. Class 0's candidates [3, 0, 1]: expert 0 accepts 0
    (argmax 0) and 1; class 2's [2, 5, 4]: expert 0 accepts 2 only, expert 1 then 5 (argmax 1
    → predicted 2; 4 would be too, but comes later)."""
    model, layout = linear_expert()
    pool = torch.tensor(
        [[5.0, 0, 0], [4.0, 1, 0], [0, 0, 3.0], [0, 2.0, 0], [0, 3.0, 0], [0, 2.0, 1]]
    )
    identity = torch.eye(3).reshape(-1)
    shift = torch.eye(3).roll(1, dims=0).reshape(-1)  # row k predicts from input k−1
    candidates = [torch.tensor([3, 0, 1]), torch.tensor([4, 3]), torch.tensor([2, 5, 4])]
    chosen = teacher.select_correct(
        model, layout, [identity, shift], candidates, pool, 2, ("a", "b", "c")
    )
    assert chosen.tolist() == [0, 1, 4, 3, 2, 5]
    with pytest.raises(
        DdppError, match="only 2 training images of class 'a' correctly, fewer than --ipc 3"
    ):
        teacher.select_correct(model, layout, [identity], candidates, pool, 3, ("a", "b", "c"))


# ------------------------------------------------------------------ window, skip, settings


def test_upper_start_epoch_follows_datms_window():
    """DATM.py 485-489 with T⁻⁺ 10, T⁺ 20 over 1000 iterations: 10 + ⌊10·it/1000⌋, at most 20."""
    config = DistillConfig.from_preset(
        "cifar10", 10, max_start_from=10, max_start_epoch=20, expansion_end=1000
    )
    wanted = {0: 10, 99: 10, 100: 11, 500: 15, 999: 19, 1000: 20, 5000: 20}
    assert {it: upper_start_epoch(config, it) for it in wanted} == wanted
    assert upper_start_epoch(replace(config, max_start_from=None, expansion_end=None), 0) == 20


def test_hard_labels_leave_the_identity_as_it_was():
    plain = DistillConfig.from_preset("cifar10", 1)
    assert plain.labels == "hard" and plain.lr_labels is None
    identity = plain.identity()
    for name in ("labels", "lr_labels", "min_start_epoch", "skip_threshold", "expansion_end"):
        assert name not in identity
    learned = DistillConfig.from_preset("cifar10", 1, labels="learned")
    assert learned.lr_labels == 5.0  # DATM's configs/CIFAR-10/ConvIN/IPC1.yaml lr_y
    assert learned.identity()["labels"] == "learned"
    assert DistillConfig.from_preset("mnist", 1, labels="learned").lr_labels == 2.0  # cfg.py


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"labels": "soft"}, "--labels must be one of: hard, teacher, learned"),
        ({"lr_labels": 1.0}, "--lr-labels applies to --labels learned only"),
        ({"labels": "learned", "lr_labels": -1.0}, "--lr-labels must be a positive number"),
        ({"labels": "teacher", "init": "noise"}, "drop --init noise"),
        ({"min_start_epoch": 2}, "--min-start-epoch must be an integer in [0, --max-start-epoch)"),
        ({"max_start_from": 1}, "go together"),
        ({"max_start_from": 3, "expansion_end": 5}, "(--min-start-epoch, --max-start"),
        ({"max_start_from": 1, "expansion_end": 0}, "--expansion-end must be"),
        ({"skip_threshold": 0.0}, "--skip-threshold must be a positive number"),
    ],
)
def test_datm_settings_are_checked(overrides, fragment):
    with pytest.raises(DdppError, match=re.escape(fragment)):
        DistillConfig.from_preset("mnist", 1, max_start_epoch=2, **overrides)


def test_labels_do_not_apply_to_other_methods():
    with pytest.raises(DdppError, match="--labels does not apply to --method dm"):
        DistillConfig.from_preset("mnist", 1, method="dm", labels="teacher")


def test_datm_presets_are_its_configs():
    """Spot checks against DATM's configs/*.yaml."""
    cifar10 = presets.datm_preset("cifar10", 10)
    assert cifar10 is not None
    assert (cifar10["max_start_from"], cifar10["max_start_epoch"]) == (10, 20)
    assert (cifar10["expansion_end"], cifar10["lr_labels"], cifar10["batch_syn"]) == (
        1000,
        2.0,
        100,
    )
    tiny = presets.datm_preset("tinyimagenet", 50)
    assert tiny is not None and (tiny["min_start_epoch"], tiny["syn_steps"]) == (40, 20)
    assert presets.datm_preset("mnist", 1) is None


# ------------------------------------------------------------------ whole runs


def small_config(**overrides) -> DistillConfig:
    """test_distill's small run, with a window of 3 start epochs and 6 iterations."""
    return distill_small_config(**{"max_start_epoch": 3, "iterations": 6, **overrides})


def test_hard_labels_given_equal_no_option(tiny_buffer, tiny_mnist, tmp_path):
    run(small_config(iterations=3), tmp_path / "plain", tiny_buffer, tiny_mnist)
    run(small_config(iterations=3, labels="hard"), tmp_path / "hard", tiny_buffer, tiny_mnist)
    assert_same_run(tmp_path / "plain", tmp_path / "hard")
    assert distilled.load(tmp_path / "hard" / distill.DISTILLED_NAME).targets is None


@pytest.fixture(scope="module")
def learned_run(good_buffer, tiny_mnist, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("learned")
    config = small_config(
        labels="learned", test_runs=1, eval_epochs=1, eval_every=3, eval_runs=1, skip_threshold=5.0
    )
    run(config, folder, good_buffer, tiny_mnist)
    return folder


def test_learned_labels_resume_bit_for_bit(learned_run, good_buffer, tiny_mnist, tmp_path):
    config = small_config(
        labels="learned", test_runs=1, eval_epochs=1, eval_every=3, eval_runs=1, skip_threshold=5.0
    )

    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, good_buffer, tiny_mnist, on_event=ctrl_c_after(4))
    saved = store.read(tmp_path / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    assert saved.metadata["iteration"] == 3
    assert {"targets", "momentum_targets"} <= saved.tensors.keys()
    run(config, tmp_path, good_buffer, tiny_mnist)
    assert_same_run(learned_run, tmp_path)


def test_learned_labels_move_and_are_saved_as_soft_labels(learned_run, good_buffer, tiny_mnist):
    result = distilled.load(learned_run / distill.DISTILLED_NAME)
    assert (result.label_mode, result.target_loss, result.temperature) == ("learned", "soft-ce", 1)
    assert result.label_text == "learned labels (soft CE, T 1)"
    assert result.settings["labels"] == "learned" and result.settings["lr_labels"] == 2.0
    lines = [json.loads(x) for x in (learned_run / distill.METRICS_NAME).read_text().splitlines()]
    assert [line["iteration"] for line in lines if "val_accuracy" in line] == [0, 3, 6]
    saved = json.loads((learned_run / distill.SUMMARY_NAME).read_text())
    assert saved["labels"] == "learned labels (soft CE, T 1)"
    assert saved["test"]["protocol"]["label_text"] == "learned labels (soft CE, T 1)"
    start = setup_of(small_config(labels="teacher"), good_buffer, tiny_mnist).teacher_start()
    assert not torch.equal(result.targets, start[1].cpu())  # the labels were learned
    assert result.labels.tolist() == start[1].argmax(1).tolist()  # …and still classify


def setup_of(config: DistillConfig, buffer: Path, data_root: Path):
    from ddpp_cli.engine.distill.setup import set_up

    return set_up(
        config, buffer, data_root=data_root, download=False, device=torch.device("cpu"),
        emit=lambda event: None,
    )  # fmt: skip


def test_teacher_start_is_datms(good_buffer, tiny_mnist):
    """Every starting image is classified correctly by some expert's final snapshot, and its
    label is the mean of those experts' logits (computed here expert by expert)."""
    setup = setup_of(small_config(labels="teacher"), good_buffer, tiny_mnist)
    images, logits = setup.teacher_start()
    model, layout = setup.student.model, setup.layout
    epochs = setup.buffer_epochs
    finals = [
        store.read(setup.expert_paths[e], store.TRAJECTORY_FORMAT).tensors["params"][epochs]
        for e in sorted(setup.expert_paths)
    ]
    for row, label in enumerate(setup.labels.tolist()):
        outputs = [
            functional_forward(model, layout, theta, images[row : row + 1])[0] for theta in finals
        ]
        right = [out for out in outputs if int(out.argmax()) == label]
        assert right
        torch.testing.assert_close(logits[row], torch.stack(right).mean(0).detach())
    vectors = setup.label_vectors(None)  # validation trains on them, named as the set names them
    assert torch.equal(vectors.vectors, logits) and (vectors.loss, vectors.temperature) == (
        "soft-ce",
        1.0,
    )
    assert vectors.text == setup.as_set(images, 0.01, 0).label_text


def test_skip_rule_leaves_the_images_and_says_so(tiny_buffer, tiny_mnist, tmp_path):
    """A threshold below every normalised loss: no update (DATM.py 556-561), each line marked."""
    config = small_config(iterations=2, skip_threshold=1e-9, checkpoint_every=1)
    run(config, tmp_path, tiny_buffer, tiny_mnist)
    lines = [json.loads(x) for x in (tmp_path / distill.METRICS_NAME).read_text().splitlines()]
    assert [line.get("skipped") for line in lines[1:]] == [True, True]
    assert all(line["loss"] > 1e-9 for line in lines[1:])
    first = setup_of(config, tiny_buffer, tiny_mnist).initial_images()
    assert torch.equal(distilled.load(tmp_path / distill.DISTILLED_NAME).images, first)


def test_compare_rows_name_the_labels():
    """``ddpp run --compare ddpp-learned``: its Markdown and JSON row label."""
    from ddpp_cli.engine import compare as compare_engine

    row = compare_engine.ROWS["ddpp-learned"]
    assert (row.label, dict(row.changes)) == ("DDPP, learned soft labels", {"labels": "learned"})
    assert compare_engine.ROWS["ddpp-teacher"].label == "DDPP, teacher soft labels"


def test_teacher_labels_stay_fixed_and_resume_bit_for_bit(good_buffer, tiny_mnist, tmp_path):
    """The teacher labels are not checkpointed: a resumed run makes them again, the same."""
    config = small_config(labels="teacher", iterations=4)
    run(config, tmp_path / "straight", good_buffer, tiny_mnist)
    run(replace(config, iterations=2), tmp_path / "resumed", good_buffer, tiny_mnist)
    run(config, tmp_path / "resumed", good_buffer, tiny_mnist)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    saved = store.read(tmp_path / "resumed" / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    assert "targets" not in saved.tensors
    result = distilled.load(tmp_path / "resumed" / distill.DISTILLED_NAME)
    start = setup_of(config, good_buffer, tiny_mnist).teacher_start()
    assert torch.equal(result.targets, start[1].cpu()) and result.label_mode == "teacher"
    assert not torch.equal(result.images, start[0])  # the images moved


def test_resume_with_other_labels_is_refused(learned_run):
    with pytest.raises(DdppError, match="labels: learned → teacher"):
        distill.resume_config(learned_run, {"labels": "teacher"})


def test_soft_labels_take_datms_config_as_their_preset():
    """CIFAR-10 IPC 10 (DATM's configs/CIFAR-10/ConvIN/IPC10.yaml): N 80, batch_syn 100, the
    window 10 → 20 over 1000 iterations, threshold 1, lr_y 2; hard labels keep MTT's row."""
    learned = DistillConfig.from_preset("cifar10", 10, labels="learned")
    wanted = {
        "syn_steps": 80, "expert_epochs": 2, "min_start_epoch": 0, "max_start_from": 10,
        "max_start_epoch": 20, "expansion_end": 1000, "batch_syn": 100, "lr_img": 100.0,
        "lr_lr": 1e-5, "lr_teacher": 0.01, "lr_labels": 2.0, "skip_threshold": 1.0,
    }  # fmt: skip
    assert {name: getattr(learned, name) for name in wanted} == wanted
    hard = DistillConfig.from_preset("cifar10", 10)
    assert (hard.syn_steps, hard.batch_syn, hard.max_start_from) == (30, None, None)
    resolved = distill.resolve({"dataset": "cifar10", "ipc": 10, "labels": "teacher"}, None)
    assert resolved.config.syn_steps == 80 and resolved.config.lr_labels is None
    assert resolved.origin["syn_steps"] == resolved.origin["skip_threshold"] == DATM_ORIGIN
    assert resolved.origin["labels"] == "user"
    derived = DistillConfig.from_preset("cifar10", 10, labels="learned", derive=True)
    assert (derived.lr_teacher, derived.lr_lr) == (None, None)
