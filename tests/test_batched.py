"""Batched (vmapped) training equals one-network-at-a-time training to float tolerance."""

from __future__ import annotations

import copy

import pytest
import torch

from ddpp_cli.engine import augment, batched, models
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine.device import seeded
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.functional import flat_parameters
from ddpp_cli.engine.training import minibatches, train_epoch

TOL = {"rtol": 1e-4, "atol": 1e-5}
# Whole trajectories on real-looking data: a pre-activation within rounding of 0 can land on the
# other side of a ReLU in one mode, so single elements drift a little more after a few steps.
TRAJECTORY_TOL = {"rtol": 1e-3, "atol": 2e-4}


pytestmark = pytest.mark.usefixtures("one_thread")


def networks(arch: str, count: int, channels: int = 3, size: int = 16) -> list[torch.nn.Module]:
    result = []
    for k in range(count):
        with seeded(100 + k):
            result.append(models.create(arch, channels, 4, size))
    return result


def data(n: int, channels: int = 3, size: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randn(n, channels, size, size, generator=generator) + labels.view(-1, 1, 1, 1)
    return images, labels


def test_minibatches_merge_a_last_batch_smaller_than_the_minimum():
    sizes = [len(b) for b in minibatches(9, 4, torch.Generator().manual_seed(0), min_size=2)]
    assert sizes == [4, 5]
    sizes = [len(b) for b in minibatches(9, 4, torch.Generator().manual_seed(0))]
    assert sizes == [4, 4, 1]
    merged = torch.cat(list(minibatches(9, 4, torch.Generator().manual_seed(0), min_size=2)))
    plain = torch.cat(list(minibatches(9, 4, torch.Generator().manual_seed(0))))
    assert torch.equal(merged, plain)  # same order, same draws


def test_batchnorm_trains_on_a_set_whose_last_batch_has_one_image():
    (model,) = networks("convnet-bn", 1)
    images, labels = data(9)
    frozen = copy.deepcopy(model)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: loss is known
    loss = train_epoch(
        model, images, labels, optimizer, batch_size=4, dsa=augment.DSA("none"),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert seen == [4, 5]  # the 1-image tail is merged, no "Expected more than 1 value per channel"
    # The epoch's loss is the image-weighted mean of the two batches' cross-entropies (train mode).
    frozen.train()
    expected = (
        sum(
            len(index)
            * torch.nn.functional.cross_entropy(frozen(images[index]), labels[index]).item()
            for index in minibatches(9, 4, torch.Generator().manual_seed(0), min_size=2)
        )
        / 9
    )
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("arch", ["convnet", "convnet-bn"])
def test_stacked_forward_and_prediction_match_each_network(arch):
    nets = networks(arch, 3)
    stacked = batched.StackedNetworks(nets)
    images, _ = data(6)
    stacked.eval()
    logits = stacked.shared(images)
    for k, net in enumerate(nets):
        net.eval()
        torch.testing.assert_close(logits[k], net(images), **TOL)
        assert torch.equal(stacked.flat()[k], flat_parameters(net))
    assert stacked.predict(images, batch_size=4).shape == (3, 6)


@pytest.mark.parametrize(
    ("arch", "n", "strategy"),
    [("convnet", 10, augment.DEFAULT_STRATEGY), ("convnet-bn", 9, "crop_flip")],
)
def test_one_batched_epoch_equals_sequential_epochs(arch, n, strategy):
    """Own seeds, data order and DSA draws per member; BatchNorm running stats per member."""
    nets = networks(arch, 3)
    reference = [copy.deepcopy(net) for net in nets]
    sets = [data(n, seed=k) for k in range(3)]
    dsa = augment.DSA(strategy)
    options = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    expected = []
    for k, net in enumerate(reference):
        optimizer = torch.optim.SGD(net.parameters(), **options)
        generator = torch.Generator().manual_seed(k)
        for _ in range(2):
            loss = train_epoch(net, *sets[k], optimizer, batch_size=4, dsa=dsa, generator=generator)
        expected.append(loss)
    stacked = batched.StackedNetworks(nets)
    optimizer = torch.optim.SGD(stacked.parameters(), **options)
    generators = [torch.Generator().manual_seed(k) for k in range(3)]
    for _ in range(2):
        losses = batched.train_epoch(
            stacked, sets, optimizer, batch_size=4, dsa=dsa, generators=generators
        )
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), **TOL)
    for k, net in enumerate(reference):
        torch.testing.assert_close(stacked.flat()[k], flat_parameters(net), **TOL)
        for name, buffer in net.named_buffers():
            torch.testing.assert_close(stacked.buffers[name][k], buffer, **TOL)


def test_parallel_must_be_positive():
    with pytest.raises(DdppError, match="--parallel"):
        batched.check_parallel(0)
    assert batched.groups([3, 4, 5, 6, 7], 2) == [[3, 4], [5, 6], [7]]


@pytest.mark.slow
def test_batched_buffer_equals_sequential_and_resumes(tiny_mnist, tmp_path):
    config = buffer_engine.BufferConfig(
        dataset="mnist", experts=3, epochs=1, batch_size=32, seed=3, train_subset=40,
        test_subset=20,
    )  # fmt: skip
    options = {"data_root": tiny_mnist, "download": False}
    sequential = buffer_engine.train_buffer(config, tmp_path / "seq", **options)
    events: list[object] = []
    parallel = buffer_engine.train_buffer(
        config, tmp_path / "par", parallel=2, on_event=events.append, **options
    )
    for one, other in zip(sequential.experts, parallel.experts, strict=True):
        assert one.path.name == other.path.name
        a, b = buffer_engine.load_trajectory(one.path), buffer_engine.load_trajectory(other.path)
        assert torch.equal(a.params[0], b.params[0])  # same initialisation
        torch.testing.assert_close(a.params, b.params, **TRAJECTORY_TOL)
        assert set(a.metadata) == set(b.metadata)
        assert a.metadata["test_accuracy"] == pytest.approx(b.metadata["test_accuracy"])
    assert [type(e).__name__ for e in events].count("ExpertFinished") == 3
    # resume: a missing expert of a batched buffer is retrained, the others kept
    before = parallel.experts[2].path.read_bytes()
    parallel.experts[1].path.unlink()
    again = buffer_engine.train_buffer(config, tmp_path / "par", parallel=2, **options)
    assert [r.resumed for r in again.experts] == [True, False, True]
    assert parallel.experts[2].path.read_bytes() == before
    restored = buffer_engine.load_trajectory(again.experts[1].path).params
    expected = buffer_engine.load_trajectory(sequential.experts[1].path).params
    torch.testing.assert_close(restored, expected, **TRAJECTORY_TOL)
