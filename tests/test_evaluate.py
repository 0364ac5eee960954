"""The evaluation protocol (docs/evaluation.md#the-protocol): exact accuracy, schedule, seeds,
refusals, every arch."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddpp_cli.engine import data, distilled, evaluate, models, zca
from ddpp_cli.engine.device import derive_seed, seeded
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig
from ddpp_cli.engine.events import Notice
from ddpp_cli.engine.functional import flat_parameters
from ddpp_cli.engine.preprocess import Normalization, Preprocessing

FAST = EvalConfig(runs=1, epochs=2, batch_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_tensors(
    n_per_class: int = 2, classes: int = 2, channels: int = 3, size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.randn(len(labels), channels, size, size, generator=generator)
    images += labels.view(-1, 1, 1, 1).float()  # separable: class shifts the mean
    return images, labels


def mnist_set(root: Path, ipc: int = 2, preprocessing: dict | None = None, **changes):
    """A normalised set of the first ``ipc`` tiny-MNIST train images per class."""
    train = data.load("mnist", root, "train", download=False)
    index = torch.cat([torch.nonzero(train.labels == k).flatten()[:ipc] for k in range(10)])
    norm = Normalization((0.1307,), (0.3081,))
    record = DistilledSet(
        images=norm.apply(train.images[index]),
        labels=train.labels[index],
        lr=0.01,
        dataset="mnist",
        class_names=train.class_names,
        preprocessing=preprocessing or {"kind": "normalize", "mean": [0.1307], "std": [0.3081]},
        source="random",
        arch="convnet",
    )
    return replace(record, **changes)


def cheap_zca(shape: tuple[int, int, int] = (1, 28, 28)) -> zca.ZCA:
    """A stand-in 'ZCA' (x - 0.3) * 2: fitting a real one is slow on a busy 2-core machine."""
    dim = shape[0] * shape[1] * shape[2]
    eye = torch.eye(dim)
    return zca.ZCA(torch.full((dim,), 0.3), 2 * eye, 0.5 * eye, shape)


def zca_set(root: Path, folder: Path) -> tuple[DistilledSet, Path]:
    """A ZCA-whitened tiny-MNIST set and the ZCA file it refers to."""
    whitening = cheap_zca()
    path = zca.save(whitening, folder / "zca.safetensors", {"dataset": "mnist"})
    base = mnist_set(root)
    raw = Normalization((0.1307,), (0.3081,)).invert(base.images)
    record = replace(base, images=whitening.apply(raw), preprocessing=distilled.zca_reference(path))
    return record, path


# ------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"runs": 0}, "--runs"),
        ({"epochs": 0}, "--epochs"),
        ({"lr": -0.1}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"batch_size": 0}, "--batch-size"),
        ({"arch": "lenet"}, "unknown architecture"),
        ({"dsa_strategy": "blur"}, "unknown DSA op"),
    ],
)
def test_config_refuses_bad_values(changes, fragment):
    with pytest.raises(DdppError, match=fragment):
        EvalConfig(**changes)


def test_defaults_are_the_spec_protocol():
    config = EvalConfig()
    assert (config.arch, config.runs, config.epochs, config.lr) == ("convnet", 5, 1000, None)
    assert (config.momentum, config.weight_decay, config.batch_size) == (0.9, 5e-4, 256)
    assert config.dsa_strategy == "color_crop_cutout_flip_scale_rotate"


def test_std_is_the_population_std():
    mean, std = evaluate.summarize([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(math.sqrt(((0.2**2) * 2) / 3))  # np.std, ddof 0
    assert evaluate.summarize([0.3]) == (0.3, 0.0)


def test_lr_precedence():
    assert evaluate.resolve_lr(EvalConfig(lr=0.05), 0.002) == (0.05, "--lr")
    assert evaluate.resolve_lr(EvalConfig(), 0.002) == (0.002, "set")
    assert evaluate.resolve_lr(EvalConfig(), None) == (0.01, "default")
    with pytest.raises(DdppError, match="pass --lr"):
        evaluate.resolve_lr(EvalConfig(), -0.01)


# --------------------------------------------------------------------- the training loop


class Spy:
    """Stands in for training.train_epoch: records each call's settings, trains nothing."""

    def __init__(self, loss: float = 0.5) -> None:
        self.calls: list[dict] = []
        self.loss = loss

    def __call__(self, model, images, labels, optimizer, *, batch_size, dsa, generator):
        group = optimizer.param_groups[0]
        self.calls.append(
            {
                "lr": group["lr"],
                "momentum": group["momentum"],
                "weight_decay": group["weight_decay"],
                "batch_size": batch_size,
                "dsa": dsa.strategy,
                "params": flat_parameters(model).clone(),
                "draw": int(torch.randint(1 << 30, (1,), generator=generator)),
            }
        )
        return self.loss


def test_schedule_optimizer_and_dsa_follow_the_config(monkeypatch):
    spy = Spy()
    monkeypatch.setattr(evaluate.protocol, "train_epoch", spy)
    images, labels = tiny_tensors()
    config = EvalConfig(runs=1, epochs=6, batch_size=7, dsa_strategy="crop_flip")
    evaluate.train_and_test(
        images, labels, images, labels, arch="convnet", num_classes=2, lr=0.2, config=config,
        run=0, device="cpu",
    )  # fmt: skip
    assert [c["lr"] for c in spy.calls] == pytest.approx([0.2] * 3 + [0.02] * 3)
    assert {(c["momentum"], c["weight_decay"], c["batch_size"], c["dsa"]) for c in spy.calls} == {
        (0.9, 5e-4, 7, "crop_flip")
    }


def test_runs_use_distinct_reproducible_seeds(monkeypatch):
    spy = Spy()
    monkeypatch.setattr(evaluate.protocol, "train_epoch", spy)
    images, labels = tiny_tensors()
    config = EvalConfig(runs=2, epochs=1)
    evaluate.evaluate_images(images, labels, images, labels, num_classes=2, config=config)
    first = [(c["params"], c["draw"]) for c in spy.calls]
    spy.calls.clear()
    evaluate.evaluate_images(images, labels, images, labels, num_classes=2, config=config)
    again = [(c["params"], c["draw"]) for c in spy.calls]
    assert not torch.equal(first[0][0], first[1][0]) and first[0][1] != first[1][1]
    for (p, d), (q, e) in zip(first, again, strict=True):
        assert torch.equal(p, q) and d == e
    spy.calls.clear()
    evaluate.evaluate_images(
        images, labels, images, labels, num_classes=2, config=replace(config, seed=1)
    )
    assert not torch.equal(first[0][0], spy.calls[0]["params"])


def test_a_diverging_run_stops_and_is_reported(monkeypatch):
    spy = Spy(loss=float("nan"))
    monkeypatch.setattr(evaluate.protocol, "train_epoch", spy)
    images, labels = tiny_tensors()
    events: list[object] = []
    result = evaluate.evaluate_images(
        images, labels, images, labels, num_classes=2, config=EvalConfig(runs=1, epochs=5),
        on_event=events.append,
    )  # fmt: skip
    assert len(spy.calls) == 1
    assert result.protocol["diverged_runs"] == [0]
    assert isinstance(events[-1], evaluate.NetworkFinished) and events[-1].diverged


def test_returned_accuracy_is_the_fraction_of_correct_test_predictions(monkeypatch):
    """Train for a few epochs, capture the trained network, recount its test predictions."""
    created: list[torch.nn.Module] = []
    original = models.create

    def capture(*args, **kwargs):
        created.append(original(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(models, "create", capture)
    images, labels = tiny_tensors(n_per_class=4, classes=3, channels=1, size=16)
    test_images, test_labels = tiny_tensors(n_per_class=7, classes=3, channels=1, size=16, seed=1)
    config = EvalConfig(runs=1, epochs=3, lr=0.01)
    acc = evaluate.train_and_test(
        images, labels, test_images, test_labels, arch="convnet", num_classes=3, lr=0.01,
        config=config, run=0, device="cpu",
    )  # fmt: skip
    (model,) = created
    with torch.no_grad():
        model.eval()
        predicted = model(test_images).argmax(dim=1)
    correct = int((predicted == test_labels).sum())
    assert acc == correct / len(test_labels)
    # It trained: the parameters moved away from a fresh network with the same seed.
    with seeded(derive_seed(0, "eval", "convnet", 0)):
        fresh = original("convnet", 1, 3, (16, 16))
    assert not torch.equal(flat_parameters(fresh), flat_parameters(model))
    # The same seed gives the same accuracy.
    again = evaluate.train_and_test(
        images, labels, test_images, test_labels, arch="convnet", num_classes=3, lr=0.01,
        config=config, run=0, device="cpu",
    )  # fmt: skip
    assert again == acc


@pytest.mark.parametrize("arch", models.available())
def test_every_architecture_trains_under_the_protocol(arch):
    size = 32 if arch.startswith("vgg") or arch == "convnet-d5" else 16  # they pool five times
    images, labels = tiny_tensors(n_per_class=1, classes=2, channels=3, size=size)
    config = EvalConfig(arch=arch, runs=1, epochs=1)
    result = evaluate.evaluate_images(
        images, labels, images, labels, num_classes=2, config=config, lr=0.01
    )
    assert result.arch == arch and len(result.accuracies) == 1
    assert 0.0 <= result.mean <= 1.0 and result.std == 0.0


def test_result_json_has_the_protocol_and_every_run(monkeypatch):
    monkeypatch.setattr(evaluate.protocol, "train_epoch", Spy())
    images, labels = tiny_tensors()
    result = evaluate.evaluate_images(
        images, labels, images, labels, num_classes=2, config=EvalConfig(runs=3, epochs=2)
    )
    payload = json.loads(json.dumps(result.to_json()))
    assert set(payload) >= {"protocol", "accuracies", "mean", "std", "seconds", "lr"}
    assert len(payload["accuracies"]) == 3 and payload["lr"] == 0.01
    assert payload["selection"] == evaluate.SELECTION_RULE == "validation split, tested once"
    assert evaluate.EvalResult.from_json(payload) == result  # distill reloads a test result so
    protocol = payload["protocol"]
    assert protocol["epochs"] == 2 and protocol["momentum"] == 0.9
    assert protocol["weight_decay"] == 5e-4 and protocol["lr_source"] == "default"
    assert protocol["std"].startswith("population")
    assert protocol["test_size"] == 4 and protocol["train_size"] == 4


def test_events_cover_runs_and_epochs(monkeypatch):
    monkeypatch.setattr(evaluate.protocol, "train_epoch", Spy())
    images, labels = tiny_tensors()
    events: list[object] = []
    evaluate.evaluate_images(
        images, labels, images, labels, num_classes=2, config=EvalConfig(runs=2, epochs=3),
        on_event=events.append,
    )  # fmt: skip
    kinds = [type(e).__name__ for e in events]
    assert kinds == (["NetworkStarted"] + ["NetworkEpochFinished"] * 3 + ["NetworkFinished"]) * 2


def test_mismatched_test_images_are_refused():
    images, labels = tiny_tensors(channels=3, size=32)
    test_images, test_labels = tiny_tensors(channels=1, size=28)
    with pytest.raises(DdppError, match="test images"):
        evaluate.evaluate_images(
            images, labels, test_images, test_labels, num_classes=2, config=FAST
        )
    with pytest.raises(DdppError, match="outside the 2 classes"):
        evaluate.evaluate_images(images, labels + 1, images, labels, num_classes=2, config=FAST)


# ------------------------------------------------------------------------- distilled sets


def test_test_split_is_transformed_exactly_like_the_set(tiny_mnist, tmp_path):
    record, path = zca_set(tiny_mnist, tmp_path)
    images, labels, preprocessing = evaluate.load_test_split(
        record, data_root=tiny_mnist, download=False
    )
    raw = data.load("mnist", tiny_mnist, "test", download=False)
    assert preprocessing.kind == "zca"
    assert torch.equal(images, zca.load(path).apply(raw.images))
    assert torch.equal(labels, raw.labels)

    normalised = mnist_set(tiny_mnist)
    images, _, preprocessing = evaluate.load_test_split(
        normalised, data_root=tiny_mnist, download=False, test_subset=30
    )
    assert len(images) == 30 and preprocessing.kind == "normalize"
    subset = data.stratified_subset(raw, 30, derive_seed(0, "eval", "test"))
    expected = Preprocessing(normalization=Normalization((0.1307,), (0.3081,))).apply(subset.images)
    assert torch.equal(images, expected)


def test_evaluate_set_runs_and_records_the_set(tiny_mnist, tmp_path):
    record, _ = zca_set(tiny_mnist, tmp_path)
    result = evaluate.evaluate_set(
        record, replace(FAST, runs=2, epochs=1), data_root=tiny_mnist, download=False,
        test_subset=20,
    )  # fmt: skip
    assert len(result.accuracies) == 2
    assert result.lr == 0.01 and result.protocol["lr_source"] == "set"
    assert result.protocol["dataset"] == "mnist" and result.protocol["preprocessing"] == "zca"
    assert result.protocol["test_size"] == 20


def test_a_zca_set_without_its_zca_is_refused(tiny_mnist, tmp_path):
    record, path = zca_set(tiny_mnist, tmp_path)
    path.unlink()
    with pytest.raises(DdppError, match="--zca-file"):
        evaluate.evaluate_set(record, FAST, data_root=tiny_mnist, download=False)


def test_a_zca_from_another_dataset_is_refused(tiny_mnist, tmp_path):
    record, path = zca_set(tiny_mnist, tmp_path)
    other = zca.save(zca.load(path), tmp_path / "other.safetensors", {"dataset": "fashionmnist"})
    with pytest.raises(DdppError, match="fitted on fashionmnist"):
        evaluate.evaluate_set(record, FAST, data_root=tiny_mnist, download=False, zca_path=other)


def test_a_zca_file_for_a_normalised_set_is_refused(tiny_mnist, tmp_path):
    _, path = zca_set(tiny_mnist, tmp_path)
    with pytest.raises(DdppError, match="not ZCA-whitened"):
        evaluate.evaluate_set(
            mnist_set(tiny_mnist), FAST, data_root=tiny_mnist, download=False, zca_path=path
        )


def test_mismatched_shape_classes_or_dataset_are_refused(tiny_mnist):
    base = mnist_set(tiny_mnist)
    wrong_shape = replace(base, images=torch.zeros(len(base.labels), 1, 32, 32))
    with pytest.raises(DdppError, match="does not belong"):
        evaluate.evaluate_set(wrong_shape, FAST, data_root=tiny_mnist, download=False)
    five = replace(base, labels=base.labels % 5, class_names=base.class_names[:5])
    with pytest.raises(DdppError, match="5 classes"):
        evaluate.evaluate_set(five, FAST, data_root=tiny_mnist, download=False)
    with pytest.raises(DdppError, match="unknown dataset"):
        evaluate.evaluate_set(replace(base, dataset="mnist2"), FAST, data_root=tiny_mnist)


def test_find_set_prefers_the_best_set_of_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(DdppError, match="neither"):
        evaluate.find_set(run)
    (run / "distilled.safetensors").write_bytes(b"x")
    assert evaluate.find_set(run) == run / "distilled.safetensors"
    (run / "best.safetensors").write_bytes(b"x")
    assert evaluate.find_set(run) == run / "best.safetensors"
    assert evaluate.find_set(run / "distilled.safetensors") == run / "distilled.safetensors"
    with pytest.raises(DdppError, match="does not exist"):
        evaluate.find_set(tmp_path / "missing.safetensors")


def test_crossarch_evaluates_every_architecture(monkeypatch, tiny_mnist):
    monkeypatch.setattr(evaluate.protocol, "train_epoch", Spy())
    results = evaluate.crossarch(
        mnist_set(tiny_mnist), ["convnet", "alexnet"], FAST, data_root=tiny_mnist,
        download=False, test_subset=10,
    )  # fmt: skip
    assert list(results) == ["convnet", "alexnet"]
    assert all(r.protocol["arch"] == name for name, r in results.items())
    with pytest.raises(DdppError, match="unknown architecture"):
        evaluate.crossarch(mnist_set(tiny_mnist), ["convnet", "nope"], FAST)


# ------------------------------------------------------------------ batched runs (--parallel)


@pytest.mark.parametrize(("arch", "n_per_class"), [("convnet", 3), ("convnet-bn", 2)])
def test_parallel_runs_give_the_sequential_accuracies(arch, n_per_class):
    """convnet-bn: 5 images at batch 4 leave a last batch of one, which is merged."""
    images, labels = tiny_tensors(n_per_class=n_per_class, classes=2, channels=1, size=16)
    images = images[:5] if arch == "convnet-bn" else images
    labels = labels[:5] if arch == "convnet-bn" else labels
    test_images, test_labels = tiny_tensors(n_per_class=6, classes=2, channels=1, size=16, seed=1)
    config = EvalConfig(arch=arch, runs=3, epochs=4, batch_size=4, lr=0.05)
    kwargs = {"num_classes": 2, "config": config}
    one = evaluate.evaluate_images(images, labels, test_images, test_labels, **kwargs)
    events: list[object] = []
    many = evaluate.evaluate_images(
        images, labels, test_images, test_labels, parallel=2, on_event=events.append, **kwargs
    )
    assert many.accuracies == one.accuracies and many.protocol == one.protocol
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["NetworkStarted"] * 2 and kinds.count("NetworkEpochFinished") == 12
    assert [e.run for e in events if isinstance(e, evaluate.NetworkFinished)] == [0, 1, 2]


def test_a_diverging_run_in_a_batch_is_tested_as_it_stopped():
    images, labels = tiny_tensors(n_per_class=2, classes=2, channels=1, size=16)
    config = EvalConfig(runs=2, epochs=6, lr=1e8)
    seen: list[object] = []
    one = evaluate.evaluate_images(
        images, labels, images, labels, num_classes=2, config=config, on_event=seen.append
    )
    events: list[object] = []
    many = evaluate.evaluate_images(
        images, labels, images, labels, num_classes=2, config=config, parallel=2,
        on_event=events.append,
    )  # fmt: skip
    assert many.protocol["diverged_runs"] == one.protocol["diverged_runs"] == [0, 1]
    assert many.accuracies == one.accuracies

    def epochs(log: list[object]) -> list[tuple[int, int]]:
        return sorted((e.run, e.epoch) for e in log if isinstance(e, evaluate.NetworkEpochFinished))

    assert epochs(events) == epochs(seen) and len(epochs(seen)) < 12  # stopped early


def test_sets_of_different_sizes_fall_back_to_one_at_a_time(monkeypatch):
    monkeypatch.setattr(evaluate.protocol, "train_epoch", Spy())
    images, labels = tiny_tensors(n_per_class=3)
    events: list[object] = []
    result = evaluate.evaluate_per_run(
        lambda run: (images[: 4 + run], labels[: 4 + run]), images, labels, num_classes=2,
        config=EvalConfig(runs=2, epochs=1), parallel=2, on_event=events.append,
    )  # fmt: skip
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "one at a time" in notices[0].message
    assert result.protocol["train_size"] == [4, 5]


def test_parallel_must_be_at_least_one():
    images, labels = tiny_tensors()
    with pytest.raises(DdppError, match="--parallel"):
        evaluate.evaluate_images(
            images, labels, images, labels, num_classes=2, config=FAST, parallel=0
        )
