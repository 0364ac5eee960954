"""Evaluation records: finished runs are kept at once, a rerun continues with the first missing
run, and the result equals an uninterrupted evaluation bit for bit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_evaluate import mnist_set

from ddpp_cli.engine import evaluate
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import (
    EvalConfig,
    NetworkFinished,
    NetworkStarted,
    evaluate_images,
)

CONFIG = EvalConfig(runs=3, epochs=3, batch_size=4, lr=0.05)


def tensors(n_per_class: int, seed: int, noise: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(n_per_class)
    images = noise * torch.randn(len(labels), 1, 16, 16, generator=generator)
    return images + 0.5 * labels.view(-1, 1, 1, 1).float(), labels


SET = tensors(3, seed=0)
TEST = tensors(20, seed=1, noise=2.0)


def run(records: Path | None, config: EvalConfig = CONFIG, images=SET, **options):
    return evaluate_images(*images, *TEST, num_classes=2, config=config, records=records, **options)


class Killed(BaseException):
    """Stands in for the process dying (not an Exception: nothing may catch it)."""


def killed_when_run_starts(number: int):
    def on_event(event: object) -> None:
        if isinstance(event, NetworkStarted) and event.run == number:
            raise Killed

    return on_event


def record_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


@pytest.mark.parametrize("parallel", [1, 2])
def test_kill_after_two_runs_then_resume_equals_one_go(tmp_path, monkeypatch, parallel):
    one_go = run(tmp_path / "one-go", parallel=parallel)
    assert len(set(one_go.accuracies)) > 1  # the runs differ, so a mix-up would show

    saves = []
    real_save = evaluate.EvalRecords.save
    monkeypatch.setattr(
        evaluate.EvalRecords, "save", lambda self: saves.append(1) or real_save(self)
    )
    with pytest.raises(Killed):
        run(tmp_path / "b", parallel=parallel, on_event=killed_when_run_starts(2))
    assert len(saves) == (1 if parallel == 2 else 2)  # a batch's runs are recorded together
    (path,) = record_files(tmp_path / "b")
    assert sorted(json.loads(path.read_text())["runs"]) == ["0", "1"]
    assert not list((tmp_path / "b").glob(".*.tmp"))

    events: list[object] = []
    resumed = run(tmp_path / "b", parallel=parallel, on_event=events.append)
    assert [e.run for e in events if isinstance(e, NetworkStarted)] == [2]
    finished = [(e.run, e.resumed) for e in events if isinstance(e, NetworkFinished)]
    assert finished == [(0, True), (1, True), (2, False)]
    assert resumed.accuracies == one_go.accuracies  # bit-equal floats
    assert (resumed.mean, resumed.std) == (one_go.mean, one_go.std)


def test_more_runs_reuse_the_recorded_ones_and_a_rerun_trains_nothing(tmp_path):
    run(tmp_path, replace(CONFIG, runs=2))
    events: list[object] = []
    three = run(tmp_path, on_event=events.append)
    assert [e.run for e in events if isinstance(e, NetworkStarted)] == [2]
    again: list[object] = []
    assert run(tmp_path, on_event=again.append).accuracies == three.accuracies
    assert not [e for e in again if isinstance(e, NetworkStarted)]
    assert len(record_files(tmp_path)) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"images": tensors(3, seed=7)},
        {"config": replace(CONFIG, epochs=2)},  # (CONFIG has 3)
        {"config": replace(CONFIG, lr=0.04)},
        {"config": replace(CONFIG, seed=1)},
    ],
    ids=["other-set", "other-epochs", "other-lr", "other-seed"],
)
def test_another_set_or_protocol_never_reuses_a_record(tmp_path, change):
    run(tmp_path)
    events: list[object] = []
    run(tmp_path, on_event=events.append, **change)
    assert [e.run for e in events if isinstance(e, NetworkStarted)] == [0, 1, 2]
    assert len(record_files(tmp_path)) == 2  # one file per evaluation, side by side


def test_a_record_that_does_not_match_its_name_is_refused_in_one_line(tmp_path):
    run(tmp_path, replace(CONFIG, runs=1))
    (path,) = record_files(tmp_path)
    content = json.loads(path.read_text())
    content["identity"]["protocol"]["epochs"] = 99
    path.write_text(json.dumps(content))
    with pytest.raises(DdppError, match="another set or protocol") as caught:
        run(tmp_path)
    assert "\n" not in str(caught.value) and path.name in str(caught.value)
    path.write_text("{not json")
    with pytest.raises(DdppError, match="not readable evaluation records"):
        run(tmp_path)


def test_crossarch_keeps_one_record_per_architecture(tmp_path, tiny_mnist):
    config = EvalConfig(runs=2, epochs=1, batch_size=64)
    options = {"data_root": tiny_mnist, "download": False, "test_subset": 10}
    first = evaluate.crossarch(
        mnist_set(tiny_mnist), ["convnet", "convnet-bn"], config, records=tmp_path, **options
    )
    names = [p.name.split("-")[0] for p in record_files(tmp_path)]
    assert sorted(names) == ["convnet", "convnet"]  # convnet-<hash>, convnet-bn-<hash>
    events: list[object] = []
    again = evaluate.crossarch(
        mnist_set(tiny_mnist), ["convnet", "convnet-bn"], config, records=tmp_path,
        on_event=events.append, **options,
    )  # fmt: skip
    assert not [e for e in events if isinstance(e, NetworkStarted)]
    assert {a: r.accuracies for a, r in again.items()} == {
        a: r.accuracies for a, r in first.items()
    }


def test_default_records_dir(tmp_path):
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    assert evaluate.default_records_dir(run_folder) == run_folder / "evaluations"
    best = run_folder / "best.safetensors"
    assert evaluate.default_records_dir(best) == run_folder / "evaluations"
    assert evaluate.default_records_dir(run_folder / "distilled.safetensors") == (
        run_folder / "evaluations"
    )
    assert evaluate.default_records_dir(tmp_path / "mine.safetensors") == tmp_path / "mine.eval"
    assert evaluate.default_records_dir(None).name == "evaluations"
