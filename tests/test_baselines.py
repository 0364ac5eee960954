"""Coreset baselines: random and herding selection, and their evaluation under the protocol."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ddpp_cli.engine import baselines, coresets, data, distilled, evaluate, models, store, zca
from ddpp_cli.engine.baselines import BaselineConfig
from ddpp_cli.engine.device import derive_seed, seeded
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def split(counts: list[int], size: int = 16, seed: int = 0) -> data.ImageSplit:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    images = torch.rand(len(labels), 1, size, size, generator=generator)
    return data.ImageSplit(images, labels, tuple(f"c{k}" for k in range(len(counts))))


def cheap_zca(dataset: str, path) -> object:
    """A stand-in ZCA file (x - 0.3) * 2 for 1×28×28 images (a real fit is slow here)."""
    eye = torch.eye(784)
    transform = zca.ZCA(torch.full((784,), 0.3), 2 * eye, 0.5 * eye, (1, 28, 28))
    return zca.save(transform, path, {"dataset": dataset})


# -------------------------------------------------------------------------------- herding


def test_herding_is_greedy_mean_matching_in_one_dimension():
    # Mean 5.375. Step 1: 4.5 is nearest. Step 2: the pair mean (4.5 + x) / 2 is nearest to
    # 5.375 for x = 7. Step 3: (11.5 + x) / 3 → x = 0 (3.83) beats x = 10 (7.17). Then 10.
    features = torch.tensor([[0.0], [10.0], [4.5], [7.0]])
    assert coresets.herding_order(features, 4).tolist() == [2, 3, 0, 1]
    assert coresets.herding_order(features, 2).tolist() == [2, 3]
    # Sorting by distance to the mean would give [2, 3, 1, 0]: herding is not that.


def test_herding_picks_the_expected_order_in_two_dimensions():
    features = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.5, 0.5]])
    # Mean (0.1, 0.1): the nearest point is #4; the best partner for it is #3 (not #2, the
    # second nearest to the mean), then #2 restores the balance, then #1 before #0.
    assert coresets.herding_order(features, 5).tolist() == [4, 3, 2, 1, 0]
    by_distance = (features - features.mean(0)).norm(dim=1).argsort().tolist()
    assert by_distance == [4, 2, 3, 0, 1]


def test_embed_is_the_penultimate_layer():
    with seeded(0):
        model = models.create("convnet", 1, 3, 16)
    images = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        expected = torch.flatten(model.features(images), 1)
    assert torch.allclose(coresets.embed(model, images, batch_size=2), expected, atol=1e-5)


def test_herding_coreset_runs_herding_per_class_in_random_convnet_features():
    train = split([6, 5, 7])
    chosen = coresets.herding_coreset(train, 3, seed=4)
    with seeded(derive_seed(4, "herding", "convnet")):
        model = models.create("convnet", 1, 3, (16, 16))
    features = coresets.embed(model, train.images)
    expected = []
    for label in range(3):
        members = torch.nonzero(train.labels == label).flatten()
        expected.append(members[coresets.herding_order(features[members], 3)])
    assert chosen.tolist() == torch.cat(expected).tolist()
    assert train.labels[chosen].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(chosen, coresets.herding_coreset(train, 3, seed=4))


# --------------------------------------------------------------------------------- random


def test_random_coreset_is_class_major_seeded_and_without_repeats():
    train = split([5, 4, 6])
    chosen = coresets.random_coreset(train, 2, seed=3)
    assert train.labels[chosen].tolist() == [0, 0, 1, 1, 2, 2]
    assert len(set(chosen.tolist())) == 6
    assert torch.equal(chosen, coresets.random_coreset(train, 2, seed=3))
    draws = {tuple(coresets.random_coreset(train, 2, seed=s).tolist()) for s in range(6)}
    assert len(draws) > 1
    assert sorted(coresets.random_coreset(train, 4, seed=0)[4:8].tolist()) == [5, 6, 7, 8]


@pytest.mark.parametrize("ipc, fragment", [(0, "at least 1"), (5, "class 'c1' has \\(4")])
def test_bad_ipc_is_refused(ipc, fragment):
    train = split([5, 4, 6])
    for pick in (
        lambda: coresets.random_coreset(train, ipc, seed=0),
        lambda: coresets.herding_coreset(train, ipc, seed=0),
    ):
        with pytest.raises(DdppError, match=fragment):
            pick()


def test_config_refuses_unknown_names():
    with pytest.raises(DdppError, match="unknown baseline"):
        BaselineConfig("kcenter", "mnist", 1)
    with pytest.raises(DdppError, match="unknown dataset"):
        BaselineConfig("random", "mnist2", 1)
    with pytest.raises(DdppError, match="--ipc"):
        BaselineConfig("random", "mnist", 0)


# ---------------------------------------------------------------------- whole baselines


class Recorder:
    """Stands in for training.train_epoch and records the images of every run."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []

    def __call__(self, model, images, labels, optimizer, *, batch_size, dsa, generator):
        self.images.append(images.clone())
        return 0.5


@pytest.mark.slow
@pytest.mark.parametrize("method", coresets.list_coresets(settings=False))
def test_baseline_evaluation_draws_per_run_subsets_only_for_random(method, tiny_mnist, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(evaluate.protocol, "train_epoch", recorder)
    config = BaselineConfig(method, "mnist", 2, forgetting_epochs=1, feature_epochs=1)
    baseline = baselines.prepare_baseline(
        config, data_root=tiny_mnist, download=False, test_subset=20
    )
    assert baseline.zca_path is None and baseline.preprocessing.kind == "normalize"
    result, coreset = baselines.evaluate_baseline(baseline, EvalConfig(runs=3, epochs=1))
    assert len(result.accuracies) == 3 and result.protocol["test_size"] == 20
    assert result.protocol["source"] == method and result.protocol["ipc"] == 2
    assert result.protocol["lr_source"] == "default" and result.lr == 0.01
    different = [not torch.equal(recorder.images[0], other) for other in recorder.images[1:]]
    assert all(different) if method == "random" else not any(different)
    fixed = {"forgetting": "forgetting", "herding": "features", "herding-random": "features"}
    assert set(baseline.selection()) == ({fixed[method]} if method in fixed else set())
    assert coreset.source == method and coreset.lr is None and coreset.ipc == 2
    assert torch.equal(coreset.images, recorder.images[0])
    mean, std = 0.1307, 0.3081
    raw = data.load("mnist", tiny_mnist, "train", download=False)
    index = baseline.indices(0)
    assert torch.allclose(coreset.images, (raw.images[index] - mean) / std)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["forgetting", "herding"])
def test_a_trained_selection_is_kept_and_taken_again_not_retrained(method, tiny_mnist, tmp_path):
    def prepare(**changes):
        config = BaselineConfig(  # at 8×8: a fast network; what is kept does not depend on it
            method, "mnist", 2, forgetting_epochs=2, feature_epochs=2, image_size=8
        )
        config = replace(config, **changes)
        return baselines.prepare_baseline(
            config, data_root=tiny_mnist, download=False, test_subset=20
        )

    def select(baseline):
        events = []
        found = baseline.indices(0, on_event=events.append, kept_in=tmp_path)
        trained = sum(not isinstance(e, baselines.SelectionReused) for e in events)
        return found, trained, [e for e in events if isinstance(e, baselines.SelectionReused)]

    elsewhere = prepare()  # a torchrun rank other than 0 reads but never writes
    elsewhere.indices(0, kept_in=tmp_path / "rank1", keep=False)
    assert not (tmp_path / "rank1").exists()
    first = prepare()
    found, trained, reused = select(first)
    assert trained == 2 and not reused  # two epochs of its network
    kept = first.selection_file(tmp_path)
    assert kept.is_file() and kept.name.startswith(f"selection-{method}-")
    again = prepare()
    found_again, trained, reused = select(again)
    assert trained == 0 and [e.path for e in reused] == [kept]
    assert torch.equal(found_again, found) and again.selection() == first.selection()
    # Another selection (more epochs) is its own file; a damaged file is computed again.
    other = prepare(**{f"{'forgetting' if method == 'forgetting' else 'feature'}_epochs": 3})
    assert other.selection_file(tmp_path) != kept
    kept.write_bytes(b"damaged")
    _, trained, reused = select(prepare())
    assert trained == 2 and not reused
    assert store.read(kept, store.SELECTION_FORMAT).tensors["indices"].tolist() == found.tolist()


def test_a_saved_coreset_evaluates_like_a_distilled_set(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate.protocol, "train_epoch", Recorder())
    zca_file = cheap_zca("mnist", tmp_path / "buffer-zca.safetensors")
    baseline = baselines.prepare_baseline(
        BaselineConfig("random", "mnist", 1), data_root=tiny_mnist, download=False,
        zca_path=zca_file,
    )  # fmt: skip
    assert baseline.preprocessing.kind == "zca" and baseline.zca_path == zca_file
    path = distilled.save(tmp_path / "coreset.safetensors", baseline.make_set(baseline.indices(0)))
    loaded = distilled.load(path)
    assert loaded.source == "random" and loaded.preprocessing["kind"] == "zca"
    assert loaded.preprocessing["zca_file"] == str(zca_file.resolve())
    result = evaluate.evaluate_set(
        loaded, EvalConfig(runs=1, epochs=1), data_root=tiny_mnist, download=False,
        test_subset=10,
    )  # fmt: skip
    assert result.protocol["preprocessing"] == "zca"


def test_a_saved_coreset_remembers_the_split_seed_of_its_pool(tiny_mnist):
    """Single-folder datasets are split 80/20 by the seed; a coreset must be tested on the split
    its pool was not part of, so its data seed is stored with it."""
    baseline = baselines.prepare_baseline(
        BaselineConfig("random", "mnist", 1, seed=7), data_root=tiny_mnist, download=False
    )
    coreset = baseline.make_set(baseline.indices(0))
    assert coreset.settings["data_seed"] == 7
    assert evaluate.sets._data_options(coreset.settings) == (None, 7)


def test_zca_is_fitted_and_saved_when_no_file_is_given(tiny_mnist, tmp_path):
    baseline = baselines.prepare_baseline(
        BaselineConfig("random", "mnist", 1, zca=True), data_root=tiny_mnist, download=False,
        zca_out=tmp_path / "fitted.safetensors",
    )  # fmt: skip
    assert baseline.zca_path == tmp_path / "fitted.safetensors"
    assert zca.load(baseline.zca_path).shape == (1, 28, 28)
    raw = data.load("mnist", tiny_mnist, "test", download=False)
    assert torch.equal(baseline.test_images, zca.load(baseline.zca_path).apply(raw.images))


def test_baseline_zca_mistakes_are_refused(tiny_mnist, tmp_path):
    fashion = cheap_zca("fashionmnist", tmp_path / "fashion-zca.safetensors")
    with pytest.raises(DdppError, match="fitted on fashionmnist"):
        baselines.prepare_baseline(
            BaselineConfig("random", "mnist", 1), data_root=tiny_mnist, download=False,
            zca_path=fashion,
        )  # fmt: skip
    with pytest.raises(DdppError, match="contradict"):
        baselines.prepare_baseline(
            BaselineConfig("random", "mnist", 1, zca=False), data_root=tiny_mnist,
            download=False, zca_path=fashion,
        )  # fmt: skip
    with pytest.raises(DdppError, match="--ipc 21 is more than"):
        baselines.prepare_baseline(
            BaselineConfig("random", "mnist", 21), data_root=tiny_mnist, download=False
        )


# ------------------------------------------------------------ herding on trained features


def test_herding_on_features_pins_greedy_picks_and_lowest_index_ties():
    # Class 0 (rows 0-3): mean (1, 1). Step 1: distances of rows to the mean are 1, 1, 1, 1:
    # a four-way tie → lowest index 0 (0, 1). Step 2: mean of {0, x} nearest (1, 1) → row 1 (2, 1)
    # gives (1, 1) exactly. Class 1 (rows 4-6): mean 2; row 6 (2) is the mean itself.
    features = torch.tensor(
        [[0.0, 1.0], [2.0, 1.0], [1.0, 0.0], [1.0, 2.0], [0.0, 0.0], [4.0, 4.0], [2.0, 2.0]]
    )
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    picks = coresets.herding_on_features(features, labels, 2, 2)
    assert picks.tolist() == [0, 1, 6, 4]
    # Step 3 of class 0: mean of {0, 1, x} nearest (1, 1): rows 2 and 3 tie → 2.
    assert coresets.herding_on_features(features, labels, 2, 3).tolist()[:3] == [0, 1, 2]
    # Not the argmax (DeepCore's inverted criterion), which would start class 1 at row 4 or 5.


def write_expert(path, model, snapshots=3):
    from ddpp_cli.engine import functional

    layout = functional.ParamLayout.of(model)
    flat = functional.flat_parameters(model)
    params = torch.stack([flat * (1 + k) for k in range(snapshots)])
    store.write(path, {"params": params}, store.TRAJECTORY_FORMAT, {"layout": layout.to_json()})
    return params


def test_trained_herding_uses_the_expert_last_snapshot_and_records_it(tmp_path):
    train = split([6, 6], size=8)
    with seeded(1):
        model = models.create("convnet-d3", 1, 2, 8)
    params = write_expert(tmp_path / "expert_0000.safetensors", model)
    net, source = coresets.expert_feature_network(
        tmp_path / "expert_0000.safetensors", "convnet-d3", train
    )
    from ddpp_cli.engine.functional import flat_parameters

    assert torch.equal(flat_parameters(net), params[-1])
    indices, record = coresets.trained_herding_coreset(train, 2, net, source)
    assert record["kind"] == "expert" and record["snapshot"] == 2 and record["dim"] == 128
    assert record["expert_sha256"] == distilled.file_sha256(tmp_path / "expert_0000.safetensors")
    features = coresets.embed(net, train.images)
    assert torch.equal(indices, coresets.herding_on_features(features, train.labels, 2, 2))
    normed, record = coresets.trained_herding_coreset(train, 2, net, source, l2_normalize=True)
    unit = torch.nn.functional.normalize(features, dim=1)
    assert torch.equal(normed, coresets.herding_on_features(unit, train.labels, 2, 2))
    assert record["l2_normalize"] is True


def test_an_expert_of_another_architecture_is_refused(tmp_path):
    train = split([6, 6], size=8)
    write_expert(tmp_path / "e.safetensors", models.create("convnet-d3", 1, 3, 8))
    with pytest.raises(DdppError, match="another architecture"):
        coresets.expert_feature_network(tmp_path / "e.safetensors", "convnet-d3", train)


def test_trained_feature_network_is_seeded_and_records_its_recipe():
    train = split([6, 6], size=8)
    epochs = []
    net, source = coresets.train_feature_network(
        train, "convnet-d3", epochs=2, seed=3, on_epoch=lambda e, n, loss: epochs.append(e)
    )
    again, _ = coresets.train_feature_network(train, "convnet-d3", epochs=2, seed=3)
    from ddpp_cli.engine.functional import flat_parameters

    assert torch.equal(flat_parameters(net), flat_parameters(again))
    assert epochs == [1, 2]
    assert source.describe() == {
        "kind": "trained", "arch": "convnet-d3", "seed": 3, "epochs": 2, "lr": 0.01,
        "momentum": 0.0, "batch_size": 256, "dsa": True,
    }  # fmt: skip
    with seeded(derive_seed(3, "herding-features", "convnet-d3")):
        fresh = models.create("convnet-d3", 1, 2, 8)
    assert not torch.equal(flat_parameters(net), flat_parameters(fresh))  # it did train


def test_the_coreset_registry_lists_every_kind_and_refuses_an_unknown_one():
    assert coresets.list_coresets() == (
        "random", "herding", "forgetting", "forgetting-deepcore", "herding-random",
    )  # fmt: skip
    assert coresets.list_coresets(settings=False) == (
        "random", "herding", "forgetting", "herding-random",
    )  # fmt: skip
    deepcore = coresets.get_coreset("forgetting-deepcore")
    assert deepcore.method == "forgetting"
    assert dict(deepcore.preset) == {"forgetting_unlearned": "deepcore"}
    message = (
        "unknown coreset 'x'; choose one of: random, herding, forgetting, forgetting-deepcore, "
        "herding-random."
    )
    with pytest.raises(DdppError) as caught:
        coresets.get_coreset("x")
    assert str(caught.value) == message
    with pytest.raises(ValueError, match="registered twice"):
        coresets.register(coresets.get_coreset("random"))
