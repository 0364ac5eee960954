"""Evaluation with a set's label vectors: soft cross-entropy and the halved MSE against explicit
sums, the targets travelling with their images, ``--labels hard|set``, the protocol's record of
the labels and records never shared between label choices."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from test_cli_evaluate import FAST, invoke, write_mnist_set
from test_eval_records import tensors as two_class_set

from ddpp_cli.engine import augment, batched, evaluate
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig, NetworkFinished, evaluate_images
from ddpp_cli.engine.evaluate.records import evaluation_identity, tensor_digest
from ddpp_cli.engine.training import (
    LabelVectors,
    halved_mse,
    minibatches,
    soft_cross_entropy,
    train_epoch,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the losses, explicit sums


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def reference_soft_ce(logits: list[list[float]], targets: list[list[float]], t: float):
    """(loss, d loss / d logits) of −Σ_k softmax(targets/T)_k log softmax(logits)_k, batch mean,
    as explicit sums: the gradient of row b is (softmax(logits_b) − softmax(targets_b/T)) / B."""
    batch = len(logits)
    loss, grad = 0.0, []
    for row, target in zip(logits, targets, strict=True):
        weights = _softmax([v / t for v in target])
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        loss -= sum(w * (v - log_norm) for w, v in zip(weights, row, strict=True)) / batch
        probs = _softmax(row)
        grad.append([(p - w) / batch for p, w in zip(probs, weights, strict=True)])
    return loss, grad


def reference_mse(logits: list[list[float]], targets: list[list[float]]):
    """(loss, gradient) of ½ · Σ_b Σ_k (logit − target)² / (B · K)."""
    count = len(logits) * len(logits[0])
    loss, grad = 0.0, []
    for row, target in zip(logits, targets, strict=True):
        loss += sum((v - t) ** 2 for v, t in zip(row, target, strict=True))
        grad.append([(v - t) / count for v, t in zip(row, target, strict=True)])
    return 0.5 * loss / count, grad


def random_rows(shape: tuple[int, ...], seed: int, scale: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.5])
def test_soft_cross_entropy_and_its_gradient_equal_explicit_sums(temperature):
    logits = random_rows((5, 4), seed=0).requires_grad_(True)
    targets = random_rows((5, 4), seed=1)
    loss = soft_cross_entropy(logits, targets, temperature)
    loss.backward()
    expected, grad = reference_soft_ce(logits.tolist(), targets.tolist(), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(logits.grad, torch.tensor(grad, dtype=torch.float64), atol=1e-14)


def test_halved_mse_and_its_gradient_equal_explicit_sums():
    logits = random_rows((6, 3), seed=2).requires_grad_(True)
    targets = random_rows((6, 3), seed=3)
    loss = halved_mse(logits, targets)
    loss.backward()
    expected, grad = reference_mse(logits.tolist(), targets.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(logits.grad, torch.tensor(grad, dtype=torch.float64), atol=1e-14)


def test_the_losses_give_one_value_per_member_of_a_stack():
    logits, targets = random_rows((3, 5, 4), seed=4), random_rows((3, 5, 4), seed=5)
    soft = soft_cross_entropy(logits, targets, 2.0)
    mse = halved_mse(logits, targets)
    assert soft.shape == mse.shape == (3,)
    for m in range(3):
        member_soft, _ = reference_soft_ce(logits[m].tolist(), targets[m].tolist(), 2.0)
        member_mse, _ = reference_mse(logits[m].tolist(), targets[m].tolist())
        assert soft[m].item() == pytest.approx(member_soft, rel=1e-12)
        assert mse[m].item() == pytest.approx(member_mse, rel=1e-12)


def test_label_vectors_refuse_an_unknown_loss_or_a_missing_temperature():
    with pytest.raises(ValueError, match="soft-ce or mse"):
        LabelVectors(torch.zeros(2, 3), "l1")
    with pytest.raises(ValueError, match="temperature"):
        LabelVectors(torch.zeros(2, 3), "soft-ce")


# ----------------------------------------------- training: targets travel with their images


def linear_model(features: int, classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, classes))


@pytest.mark.parametrize("loss", ["soft-ce", "mse"])
def test_an_epoch_on_label_vectors_is_sgd_on_the_formula_with_each_batch_s_own_rows(loss):
    """Two SGD steps (batches of 4 and 2) of a linear model, replayed in float64 by hand: each
    step's gradient is the loss formula's, on the targets of exactly that batch's images."""
    n, features, classes, lr, temperature = 6, 4, 3, 0.5, 2.0
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(n, 1, 2, 2, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    vectors = torch.randn(n, classes, generator=generator)
    model = linear_model(features, classes, seed=3)
    weight = model[1].weight.detach().double().clone()
    bias = model[1].bias.detach().double().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    target = LabelVectors(vectors, loss, temperature if loss == "soft-ce" else None)
    mean_loss = train_epoch(
        model, images, labels, optimizer, batch_size=4, dsa=augment.DSA("none"),
        generator=torch.Generator().manual_seed(11), vectors=target,
    )  # fmt: skip

    x, t = images.reshape(n, -1).double(), vectors.double()
    losses = []
    for index in minibatches(n, 4, torch.Generator().manual_seed(11)):
        logits = x[index] @ weight.T + bias
        if loss == "soft-ce":
            value, grad = reference_soft_ce(logits.tolist(), t[index].tolist(), temperature)
        else:
            value, grad = reference_mse(logits.tolist(), t[index].tolist())
        g = torch.tensor(grad, dtype=torch.float64)
        weight, bias = weight - lr * g.T @ x[index], bias - lr * g.sum(dim=0)
        losses.append((value, len(index)))
    assert len(losses) == 2  # two batches: the index selection matters
    assert torch.allclose(model[1].weight.double(), weight, atol=1e-5)
    assert torch.allclose(model[1].bias.double(), bias, atol=1e-5)
    assert mean_loss == pytest.approx(sum(v * k for v, k in losses) / n, rel=1e-5)


def test_batched_members_train_on_their_own_batches_rows_like_one_at_a_time():
    n, classes = 6, 3
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 8, 8, generator=generator)
    labels = torch.arange(n) % classes
    target = LabelVectors(torch.randn(n, classes, generator=generator), "soft-ce", 1.5)
    dsa = augment.DSA(augment.DEFAULT_STRATEGY)  # the draws must not move the rows
    alone = []
    for k in range(2):
        model = linear_model(64, classes, seed=k)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = train_epoch(
            model, images, labels, optimizer, batch_size=4, dsa=dsa,
            generator=torch.Generator().manual_seed(20 + k), vectors=target,
        )  # fmt: skip
        alone.append((loss, model[1].weight.detach()))
    stacked = batched.StackedNetworks([linear_model(64, classes, seed=k) for k in range(2)])
    optimizer = torch.optim.SGD(stacked.parameters(), lr=0.1)
    losses = batched.train_epoch(
        stacked, [(images, labels)] * 2, optimizer, batch_size=4, dsa=dsa,
        generators=[torch.Generator().manual_seed(20 + k) for k in range(2)], vectors=target,
    )  # fmt: skip
    for k, (loss, weight) in enumerate(alone):
        assert losses[k] == pytest.approx(loss, rel=1e-5)
        assert torch.allclose(stacked.params["1.weight"][k], weight, atol=1e-6)


# ------------------------------------------------------------- evaluation: --labels hard|set

CONFIG = EvalConfig(arch="convnet", runs=2, epochs=2, batch_size=4, lr=0.05)


SET = two_class_set(3, seed=0)
TEST = two_class_set(10, seed=1, noise=2.0)
LEARNED = LabelVectors(
    torch.tensor([[0.9, -0.1], [0.2, 0.8], [0.6, 0.4], [-0.2, 1.1], [0.1, 0.7], [0.3, 0.5]]),
    "mse",
    text="learned labels (MSE)",
)


def evaluated(config: EvalConfig = CONFIG, **options):
    return evaluate_images(*SET, *TEST, num_classes=2, config=config, **options)


def test_labels_hard_trains_with_cross_entropy_on_the_classes_bit_for_bit(monkeypatch):
    hard = evaluated()
    assert evaluated(replace(CONFIG, labels="hard"), vectors=LEARNED).accuracies == hard.accuracies
    for result in (hard, evaluated(replace(CONFIG, labels="hard"), vectors=LEARNED)):
        assert result.protocol["label_text"] == "hard labels"
        assert result.protocol["loss"] == "cross-entropy (hard labels)"
    seen = []
    real = evaluate.protocol.train_epoch

    def spy(*args, **kwargs):
        seen.append(kwargs.get("vectors"))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate.protocol, "train_epoch", spy)
    on_vectors = evaluated(vectors=LEARNED)
    assert seen and all(v is not None and torch.equal(v.vectors, LEARNED.vectors) for v in seen)
    assert on_vectors.protocol["labels"] == "set"
    assert on_vectors.protocol["label_text"] == "learned labels (MSE)"
    assert on_vectors.protocol["loss"] == "0.5 * mean squared error to the label vectors"


def test_a_hard_label_set_trains_alike_under_both_choices():
    assert evaluated(replace(CONFIG, labels="hard")).accuracies == evaluated().accuracies


def test_batched_runs_on_label_vectors_equal_one_at_a_time():
    alone = evaluated(vectors=LEARNED)
    together = evaluated(vectors=LEARNED, parallel=2)
    assert together.accuracies == pytest.approx(alone.accuracies, abs=0.051)  # ≤ 1 test image
    assert together.protocol["label_text"] == "learned labels (MSE)"


def test_unknown_labels_choice_and_misfit_vectors_are_refused():
    with pytest.raises(DdppError, match="--labels must be one of set, hard"):
        EvalConfig(labels="soft")
    misfit = LabelVectors(torch.zeros(6, 3), "mse")
    with pytest.raises(DdppError, match="--labels hard"):
        evaluated(vectors=misfit)


# ------------------------------------------------------------------------------- records


def test_a_hard_label_identity_is_what_it_was_before_labels_existed():
    """The identity main wrote for hard labels, spelled out: old records stay reusable."""
    config = replace(CONFIG, labels="set")
    old = {
        "set_sha256": tensor_digest(*SET),
        "test_sha256": tensor_digest(*TEST),
        "num_classes": 2,
        "protocol": {
            "arch": "convnet", "epochs": 2, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
            "batch_size": 4, "dsa_strategy": augment.DEFAULT_STRATEGY, "seed": 0,
        },
    }  # fmt: skip
    for labels in ("set", "hard"):
        made = evaluation_identity(
            SET, *TEST, num_classes=2, config=replace(config, labels=labels), lr=0.05
        )
        assert made == old
    assert evaluation_identity(
        SET, *TEST, num_classes=2, config=replace(config, labels="hard"), lr=0.05,
        vectors=None,
    ) == old  # fmt: skip
    with_vectors = evaluation_identity(SET, *TEST, num_classes=2, config=config, lr=0.05,
                                       vectors=LEARNED)  # fmt: skip
    assert with_vectors["set_sha256"] == tensor_digest(*SET, LEARNED.vectors)
    assert with_vectors["protocol"]["labels"] == {"loss": "mse", "temperature": None}


def test_an_old_hard_label_record_is_reused(tmp_path):
    first = evaluated(records=tmp_path)
    (path,) = tmp_path.glob("*.json")
    content = json.loads(path.read_text())
    assert "labels" not in content["identity"]["protocol"]
    finished = []
    again = evaluated(records=tmp_path, on_event=finished.append)
    assert again.accuracies == first.accuracies
    assert all(e.resumed for e in finished if isinstance(e, NetworkFinished))


def test_records_of_labels_hard_are_not_reused_for_labels_set(tmp_path):
    hard = evaluated(replace(CONFIG, labels="hard"), vectors=LEARNED, records=tmp_path)
    finished = []
    on_vectors = evaluated(vectors=LEARNED, records=tmp_path, on_event=finished.append)
    resumed = [e for e in finished if isinstance(e, NetworkFinished) and e.resumed]
    assert resumed == [] and len(list(tmp_path.glob("*.json"))) == 2
    again = []
    assert evaluated(vectors=LEARNED, records=tmp_path, on_event=again.append).accuracies == (
        on_vectors.accuracies
    )
    assert all(e.resumed for e in again if isinstance(e, NetworkFinished))
    assert hard.protocol["label_text"] == "hard labels"


# ----------------------------------------------------------------------------- the commands


@pytest.fixture
def learned_set(tiny_mnist, tmp_path) -> Path:
    targets = torch.eye(10) + 0.1 * torch.arange(10.0).view(-1, 1)
    return write_mnist_set(
        tiny_mnist, tmp_path / "learned.safetensors", targets=targets, label_mode="learned",
        target_loss="mse",
    )  # fmt: skip


@pytest.fixture
def teacher_set(tiny_mnist, tmp_path) -> Path:
    return write_mnist_set(
        tiny_mnist, tmp_path / "teacher.safetensors", targets=3 * torch.eye(10),
        label_mode="teacher", target_loss="soft-ce", temperature=2.0,
    )  # fmt: skip


def evaluate_json(set_path: Path, root: Path, *options: str) -> dict:
    result = invoke("evaluate", set_path, "--data-dir", root, "--no-download", "--no-records",
                    *FAST, *options, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_evaluate_json_and_protocol_line_name_the_labels(learned_set, tiny_mnist):
    protocol = evaluate_json(learned_set, tiny_mnist)["protocol"]
    assert (protocol["labels"], protocol["label_text"]) == ("set", "learned labels (MSE)")
    protocol = evaluate_json(learned_set, tiny_mnist, "--labels", "hard")["protocol"]
    assert (protocol["labels"], protocol["label_text"]) == ("hard", "hard labels")
    assert protocol["loss"] == "cross-entropy (hard labels)"
    text = invoke("evaluate", learned_set, "--data-dir", tiny_mnist, "--no-download",
                  "--no-records", *FAST)  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "· learned labels (MSE)" in " ".join(text.stdout.split())


def test_a_hard_label_set_s_protocol_line_says_hard_labels(tiny_mnist, tmp_path):
    path = write_mnist_set(tiny_mnist, tmp_path / "hard.safetensors")
    text = invoke("evaluate", path, "--data-dir", tiny_mnist, "--no-download", "--no-records",
                  *FAST)  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "· hard labels" in " ".join(text.stdout.split())


def test_crossarch_markdown_and_json_name_the_labels(teacher_set, tiny_mnist):
    args = ("crossarch", teacher_set, "--archs", "convnet", "--data-dir", tiny_mnist,
            "--no-download", "--no-records", *FAST)  # fmt: skip
    markdown = invoke(*args, "--markdown")
    assert markdown.exit_code == 0, markdown.output
    row = markdown.stdout.strip().splitlines()[2]
    assert row.startswith("| distill IPC 1 · teacher soft labels (soft CE, T 2) |")
    payload = json.loads(invoke(*args, "--labels", "hard", "--json").stdout)
    assert payload["results"]["convnet"]["protocol"]["label_text"] == "hard labels"
    hard_row = invoke(*args, "--labels", "hard", "--markdown").stdout.strip().splitlines()[2]
    assert hard_row.startswith("| distill IPC 1 · hard labels |")


def test_an_unknown_labels_choice_is_one_line(learned_set, tiny_mnist):
    result = invoke("evaluate", learned_set, "--data-dir", tiny_mnist, "--no-download",
                    "--no-records", *FAST, "--labels", "soft")  # fmt: skip
    assert_one_line_error(result, "--labels")


def test_eval_config_records_the_choice():
    assert asdict(EvalConfig())["labels"] == "set"


def test_a_compare_row_saved_before_labels_existed_still_matches(tmp_path):
    """ddpp run --compare reuses a finished row when its settings match: the default choice
    adds nothing to them, so rows saved before --labels are reused; another choice differs."""
    from test_compare import tiny_plan

    from ddpp_cli.engine import compare as compare_engine

    plan = tiny_plan()
    budget = compare_engine.row_budgets(plan, ("random",))["random"]
    job = compare_engine.RowJob("random", plan, budget, tmp_path, None)
    evaluation = compare_engine.row_settings(job)["evaluation"]
    before = {key: value for key, value in asdict(plan.evaluation).items() if key != "labels"}
    assert evaluation == json.loads(json.dumps(before))
    hard = replace(job, plan=replace(plan, evaluation=replace(plan.evaluation, labels="hard")))
    assert compare_engine.row_settings(hard)["evaluation"]["labels"] == "hard"
