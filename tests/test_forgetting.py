"""Forgetting events (Toneva et al. 2019): counts, per-class selection and the recording run."""

from __future__ import annotations

import pytest
import torch

from ddpp_cli.engine import data
from ddpp_cli.engine.coresets import forgetting
from ddpp_cli.engine.coresets.forgetting import ForgettingConfig, ForgettingEpoch
from ddpp_cli.engine.errors import DdppError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counts_on_a_hand_built_presentation_sequence():
    # Rows are presentations (epochs), columns examples.
    record = torch.tensor(
        [
            [1, 0, 1, 0, 1, 1],
            [0, 1, 1, 0, 1, 0],
            [1, 0, 1, 0, 0, 1],
            [0, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 1, 0],
        ],
        dtype=torch.bool,
    )
    # Ex 0: 1→0 at 1, 3 → 2. Ex 1: 1→0 at 2 → 1. Ex 2: always right → 0. Ex 3: never learned →
    # 5 (the number of presentations, Toneva). Ex 4: 1→0 once (presentation 2). Ex 5: 2.
    assert forgetting.forgetting_counts(record).tolist() == [2, 1, 0, 5, 1, 2]
    # A 0→1 (learning) event alone is not a forgetting event.
    assert forgetting.forgetting_counts(torch.tensor([[0], [1]])).tolist() == [0]


def test_never_learned_examples_rank_first_for_toneva_and_last_for_deepcore():
    # Class 0: example 0 never learned (count = 4 epochs), example 1 forgotten twice, 2 never.
    counts = forgetting.forgetting_counts(
        torch.tensor([[0, 1, 1], [0, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    )
    assert counts.tolist() == [4, 2, 0]
    labels = torch.zeros(3, dtype=torch.long)
    picks = {}
    for unlearned in forgetting.UNLEARNED:
        config = ForgettingConfig(epochs=4, unlearned=unlearned)
        ranked = forgetting.ranking_counts(counts, config)
        picks[unlearned] = forgetting.select_most_forgotten(ranked, labels, 1, 1, 0).tolist()
    assert picks == {"toneva": [0], "deepcore": [1]}
    with pytest.raises(DdppError, match="toneva, deepcore"):
        ForgettingConfig(unlearned="never")


def test_selection_takes_the_most_forgotten_per_class_with_seeded_tie_breaks():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    counts = torch.tensor([3, 1, 3, 0, 0, 2, 5, 2])
    picks = {
        tuple(forgetting.select_most_forgotten(counts, labels, 2, 2, seed).tolist())
        for seed in range(30)
    }
    # Class 0: both count-3 examples (0, 2) in either order; class 1: 6 first, then 5 or 7.
    assert picks <= {(0, 2, 6, 5), (2, 0, 6, 5), (0, 2, 6, 7), (2, 0, 6, 7)}
    assert {p[3] for p in picks} == {5, 7}  # the tie is broken both ways over seeds
    first = forgetting.select_most_forgotten(counts, labels, 2, 2, seed=4)
    assert torch.equal(first, forgetting.select_most_forgotten(counts, labels, 2, 2, seed=4))
    assert forgetting.select_most_forgotten(counts, labels, 2, 1, 0).tolist()[1] == 6
    with pytest.raises(DdppError, match="--ipc 5 is more than class 0"):
        forgetting.select_most_forgotten(counts, labels, 2, 5, 0)


def tiny_split() -> data.ImageSplit:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(6)
    images = torch.randn(len(labels), 1, 8, 8, generator=generator) * 0.1
    images[:, 0, 0, 0] += labels.float()  # learnable
    return data.ImageSplit(images, labels, ("a", "b", "c"))


def test_a_tiny_run_records_every_example_at_every_epoch():
    train = tiny_split()
    config = ForgettingConfig(arch="convnet-d3", epochs=3, batch_size=5, lr=0.05)
    events = []
    indices, counts = forgetting.forgetting_coreset(train, 2, config, on_event=events.append)
    assert indices.shape == (6,) and counts.shape == (18,)
    assert train.labels[indices].tolist() == [0, 0, 1, 1, 2, 2]
    assert [e.epoch for e in events] == [1, 2, 3]
    assert all(isinstance(e, ForgettingEpoch) and 0 <= e.accuracy <= 1 for e in events)
    assert int(counts.max()) <= 3
    # The record itself: one row per epoch, one column per example; same seed, same record.
    model = forgetting.forgetting_network(train, config)
    record = forgetting.record_presentations(model, train.images, train.labels, config)
    assert record.shape == (3, 18) and record.dtype == torch.bool
    again = forgetting.record_presentations(
        forgetting.forgetting_network(train, config), train.images, train.labels, config
    )
    assert torch.equal(record, again)
    assert torch.equal(forgetting.forgetting_counts(record), counts)


def test_correctness_is_recorded_before_the_update():
    # One batch holding every example: the record of epoch 1 must be the predictions of the
    # untouched network, not of the network after the step.
    train = tiny_split()
    config = ForgettingConfig(arch="convnet-d3", epochs=1, batch_size=18, lr=1.0)
    model = forgetting.forgetting_network(train, config)
    with torch.no_grad():
        before = model(train.images).argmax(dim=1) == train.labels
    model.train()
    record = forgetting.record_presentations(model, train.images, train.labels, config)
    assert torch.equal(record[0], before)
    with torch.no_grad():
        after = model(train.images).argmax(dim=1) == train.labels
    assert not torch.equal(after, before)  # the step changed the predictions


def test_config_and_ipc_are_checked_before_training():
    with pytest.raises(DdppError, match="at least 1 epoch"):
        ForgettingConfig(epochs=0)
    with pytest.raises(DdppError, match="unknown architecture"):
        ForgettingConfig(arch="nope")
    with pytest.raises(DdppError, match="--ipc 7"):
        forgetting.forgetting_coreset(tiny_split(), 7, ForgettingConfig(arch="convnet-d3"))
