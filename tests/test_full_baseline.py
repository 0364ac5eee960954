"""The whole training set as a baseline (engine/baselines/full.py, ``ddpp evaluate --baseline
full``, the compare's ``full`` row): the cache key, reuse of cached runs, the CLI's refusals and
the row's budget and published figure. Tiny generated data (8×8 MNIST-format images)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import baselines, layout, pipeline, published
from ddpp_cli.engine import compare as compare_engine
from ddpp_cli.engine.baselines.full import FULL_DIRNAME, IDENTITY_NAME, preprocessing_key
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.evaluate import EvalConfig, NetworkStarted
from tests.conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
NORMALISED = {"kind": "normalize", "mean": [0.1307], "std": [0.3081]}


def identity_of(evaluation: EvalConfig | None = None, **changes) -> dict:
    settings = dict(image_size=8, train_subset=None, data_seed=0, test_subset=None)
    settings.update(changes)
    preprocessing = settings.pop("preprocessing", NORMALISED)
    dataset = settings.pop("dataset", "mnist")
    return baselines.full_identity(
        dataset, preprocessing, evaluation or EvalConfig(epochs=2), **settings
    )


# ------------------------------------------------------------------------------ the cache key


def test_the_cache_folder_is_the_identitys_hash_under_the_data_home():
    identity = identity_of()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    expected = layout.data_home() / FULL_DIRNAME / f"mnist-convnet-{digest}"
    assert baselines.cache_folder(identity) == expected
    assert baselines.cache_folder(identity_of()) == expected  # the same identity, the same folder
    assert identity["evaluation"]["lr"] == 0.01  # no lr given: the protocol's 0.01, as trained
    assert "runs" not in identity["evaluation"]
    # --lr 0.01 trains exactly as the default does: one cache
    assert baselines.cache_folder(identity_of(EvalConfig(epochs=2, lr=0.01))) == expected
    # how many networks is not what they are: runs share the cache
    assert baselines.cache_folder(identity_of(EvalConfig(epochs=2, runs=9))) == expected
    # real images have hard labels only: --labels hard trains them as the default does
    assert baselines.cache_folder(identity_of(EvalConfig(epochs=2, labels="hard"))) == expected


def test_any_protocol_or_data_field_changed_gives_another_folder():
    base = EvalConfig(epochs=2)
    other = {"arch": "convnet-d2", "epochs": 3, "lr": 0.02, "momentum": 0.5,
             "weight_decay": 0.0, "batch_size": 64, "dsa_strategy": "none", "seed": 1}  # fmt: skip
    # runs: more runs extend the cache; labels: real images have hard labels only
    assert set(other) == {f.name for f in fields(EvalConfig)} - {"runs", "labels"}
    folders = {baselines.cache_folder(identity_of(base))}
    for name, value in other.items():
        folders.add(baselines.cache_folder(identity_of(replace(base, **{name: value}))))
    data_changes = {
        "dataset": "fashionmnist", "image_size": 16, "train_subset": 50, "data_seed": 1,
        "test_subset": 20, "preprocessing": {"kind": "zca", "regularization": 0.1},
    }  # fmt: skip
    for name, value in data_changes.items():
        folders.add(baselines.cache_folder(identity_of(base, **{name: value})))
    folders.add(baselines.cache_folder(identity_of(base, channels=3)))
    assert len(folders) == 1 + len(other) + len(data_changes) + 1


def test_the_key_holds_what_decides_the_transform_not_where_a_zca_file_is():
    set_record = {"kind": "zca", "zca_file": "/a/zca.safetensors", "zca_sha256": "ab",
                  "regularization": 0.1}  # fmt: skip
    fresh = {"kind": "zca", "zca_file": None, "regularization": 0.1}
    assert preprocessing_key(set_record) == preprocessing_key(fresh)
    assert preprocessing_key(set_record) == {"kind": "zca", "regularization": 0.1}
    assert preprocessing_key(NORMALISED) == NORMALISED


# ------------------------------------------------------------------------------ reuse of runs


def evaluate_full(config, evaluation, events, data_root):
    return baselines.evaluate_full(
        config, evaluation, download=False, on_event=events.append, data_root=data_root
    )


def trained_runs(events: list) -> list[int]:
    return [event.run for event in events if isinstance(event, NetworkStarted)]


def test_a_rerun_trains_nothing_and_more_runs_train_only_the_extra(tiny_mnist):
    config = baselines.FullConfig("mnist", image_size=8)
    events: list = []
    first = evaluate_full(config, EvalConfig(runs=2, epochs=1, batch_size=32), events, tiny_mnist)
    assert trained_runs(events) == [0, 1] and first.result.reused_runs == []
    assert first.result.protocol["train_size"] == 100  # every training image: 10 per class
    assert first.result.protocol["source"] == "full"
    assert json.loads((first.folder / IDENTITY_NAME).read_text()) == first.identity
    assert first.folder == baselines.cache_folder(first.identity)

    events.clear()
    again = evaluate_full(config, EvalConfig(runs=2, epochs=1, batch_size=32), events, tiny_mnist)
    assert trained_runs(events) == [] and again.result.reused_runs == [0, 1]
    assert again.result.accuracies == first.result.accuracies

    events.clear()
    more = evaluate_full(config, EvalConfig(runs=3, epochs=1, batch_size=32), events, tiny_mnist)
    assert trained_runs(events) == [2] and more.result.reused_runs == [0, 1]
    assert more.result.accuracies[:2] == first.result.accuracies

    cached = baselines.full_accuracy(first.identity)  # from the records alone
    values = more.result.accuracies
    mean = sum(values) / 3
    assert cached.accuracies == values and math.isclose(cached.mean, mean)
    assert math.isclose(cached.std, math.sqrt(sum((v - mean) ** 2 for v in values) / 3))
    assert baselines.full_accuracy(first.identity, runs=2).accuracies == values[:2]
    assert baselines.full_accuracy(first.identity, runs=4) is None  # run 3 was never trained
    other = {**first.identity, "train_subset": 40}
    assert baselines.full_accuracy(other) is None


def test_a_train_subset_is_its_own_cache_and_size(tiny_mnist):
    events: list = []
    found = evaluate_full(
        baselines.FullConfig("mnist", image_size=8, train_subset=40),
        EvalConfig(runs=1, epochs=1, batch_size=32), events, tiny_mnist,
    )  # fmt: skip
    assert found.result.protocol["train_size"] == 40
    assert found.identity["train_subset"] == 40 and found.result.protocol["train_subset"] == 40


# ------------------------------------------------------------------------------ the CLI


def full_args(data_dir: Path, *extra: object) -> list[str]:
    return [str(a) for a in ("evaluate", "--baseline", "full", "--dataset", "mnist",
                             "--data-dir", data_dir, "--no-download", *extra)]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--ipc", "1"), "--ipc does not apply to --baseline full"),
        (("--save", "x.safetensors"), "--save does not apply to --baseline full"),
        (("--records", "r"), "--records does not apply to --baseline full"),
        (("--no-records",), "--no-records does not apply to --baseline full"),
        (("--forgetting-epochs", "3"), "--forgetting-epochs does not apply to --baseline full"),
    ],
)
def test_cli_refuses_what_full_does_not_take(tmp_path, extra, fragment):
    result = runner.invoke(app, full_args(tmp_path, *extra))
    assert_one_line_error(result, fragment)


def test_cli_full_needs_a_dataset():
    result = runner.invoke(app, ["evaluate", "--baseline", "full"])
    assert_one_line_error(result, "--baseline full needs --dataset D")


@pytest.mark.slow
def test_cli_trains_the_whole_set_then_reuses_its_cache(tiny_mnist):
    args = full_args(tiny_mnist, "--image-size", "8", "--runs", "1", "--epochs", "1", "--json")
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    payload = json.loads(first.output.strip().splitlines()[-1])
    assert payload["set"] is None and payload["protocol"]["train_size"] == 100
    assert payload["provenance"]["reused_runs"] == []
    cache = Path(payload["cache"])
    assert cache.parent == layout.data_home() / FULL_DIRNAME and (cache / IDENTITY_NAME).is_file()
    again = runner.invoke(app, args)
    reused = json.loads(again.output.strip().splitlines()[-1])
    assert reused["provenance"]["reused_runs"] == [0]
    assert reused["accuracies"] == payload["accuracies"] and reused["cache"] == str(cache)
    text = runner.invoke(app, args[:-1])  # the text output names the cache and the reused run
    assert f"records: {cache}" in text.output and "run 1 resumed from there" in text.output


# ------------------------------------------------------------------------------ the compare row


def test_the_full_rows_budget_cuts_epochs_and_training_images():
    quick = pipeline.plan_run("fashionmnist", 1, profile="quick")
    budget = compare_engine.row_budgets(quick, ("full",))["full"]
    assert budget.text() == "5 epochs, train images 5000 (paper 1000, all)"
    assert budget.origin == "profile" and compare_engine.ROWS["full"].label == "Full dataset"
    assert compare_engine.RUNNERS[compare_engine.ROWS["full"].kind] is compare_engine.run_full_row
    given = compare_engine.row_budgets(quick, ("full",), {"full": 20})["full"]
    assert given.text() == "20 epochs, train images 5000 (paper 1000, all)"
    paper = pipeline.plan_run("fashionmnist", 1, profile="paper", epochs=300)
    assert compare_engine.row_budgets(paper, ("full",))["full"].text() == "300 epochs (paper 1000)"


def test_the_full_row_trains_the_coresets_data_and_records_its_cache(tiny_mnist, tmp_path):
    plan = pipeline.plan_run(
        "mnist", 1, profile="quick", image_size=8, train_subset=80, runs=1, epochs=3,
        test_subset=20,
    )  # fmt: skip
    budget = compare_engine.row_budgets(plan, ("full",), {"full": 1})["full"]
    job = compare_engine.RowJob("full", plan, budget, tmp_path, None)
    assert asdict(compare_engine.full_config(job)) == asdict(
        baselines.FullConfig("mnist", zca=False, train_subset=80, image_size=8, seed=0)
    )
    summary = compare_engine.compare(
        plan, ("full",), tmp_path / "c", budgets={"full": 1}, data_root=tiny_mnist,
        download=False,
    )  # fmt: skip
    row = summary.rows[0]
    assert row.result.protocol["epochs"] == 1 and row.result.protocol["train_size"] == 80
    assert row.set_path is None and row.reference.text() == "99.6ᵘ"
    saved = json.loads((row.folder / "row.json").read_text())
    cache = Path(saved["result"]["cache"])
    assert cache.parent == layout.data_home() / FULL_DIRNAME
    identity = json.loads((cache / IDENTITY_NAME).read_text())
    assert baselines.full_accuracy(identity).accuracies == row.result.accuracies


def test_the_whole_set_figure_is_the_same_at_every_ipc():
    for ipc in (1, 10, 50, 5):
        found = published.reference("cifar10", ipc, "full")
        assert (found.accuracy, found.std, found.confirmed) == (84.8, 0.1, True)
        assert found.text() == "84.8 ± 0.1"
        assert published.reference("cifar100", ipc, "full").text() == "56.2 ± 0.3"
        assert published.reference("fashionmnist", ipc, "full").text() == "93.5ᵘ"
        assert published.reference("mnist", ipc, "full").text() == "99.6ᵘ"
    assert published.reference("svhn", 1, "full") is None


def test_with_a_buffer_the_data_are_as_its_experts_saw_them(tiny_mnist, tiny_buffer):
    found = baselines.evaluate_full(
        baselines.FullConfig("mnist", buffer=tiny_buffer), EvalConfig(runs=1, epochs=1),
        data_root=tiny_mnist, download=False,
    )  # fmt: skip
    assert found.identity["image_size"] == 8  # the buffer's, not the dataset's 28
    assert found.result.protocol["image_shape"] == [1, 8, 8]
    with pytest.raises(DdppError, match="made at --image-size 8, not 16"):
        baselines.evaluate_full(
            baselines.FullConfig("mnist", buffer=tiny_buffer, image_size=16), EvalConfig(),
            data_root=tiny_mnist, download=False,
        )  # fmt: skip
