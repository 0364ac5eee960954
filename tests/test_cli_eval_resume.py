"""``ddpp evaluate``/``crossarch`` keep finished runs and continue after a real ``kill -9``.

The result of the rerun must equal an uninterrupted evaluation's, accuracies bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, kill_ddpp_when
from test_cli_evaluate import eval_json, invoke, mnist_set  # noqa: F401 (fixture)

from ddpp_cli.engine import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def eval_args(set_path: Path, data_dir: Path, *extra: object) -> list[str]:
    return [
        str(a)
        for a in (set_path, "--data-dir", data_dir, "--no-download", "--epochs", "2", "--runs",
                  "3", "--test-subset", "20", "--device", "cpu", *extra)
    ]  # fmt: skip


def recorded_runs(folder: Path) -> dict:
    files = list(folder.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())["runs"]


@pytest.mark.slow
def test_sigkill_after_the_first_run_then_rerun_equals_one_go(mnist_set, tiny_mnist):  # noqa: F811
    one_go = eval_json(*eval_args(mnist_set, tiny_mnist, "--no-records"))
    records = evaluate.default_records_dir(mnist_set)
    assert records == mnist_set.with_name("set.eval") and not records.exists()

    args = ["evaluate", *eval_args(mnist_set, tiny_mnist), "--json"]
    kill_ddpp_when(  # when run 2 starts: run 1 is in the records by then
        args, display="evaluate.EvalDisplay", message="run 2 started",
        when="isinstance(event, evaluate.NetworkStarted) and event.run == 1",
    )  # fmt: skip
    assert list(recorded_runs(records)) == ["0"]  # run 1 was kept the moment it finished

    rerun = invoke(*args)  # a new run over what the killed process left
    assert rerun.exit_code == 0, rerun.output
    resumed = json.loads(rerun.stdout)
    assert resumed["accuracies"] == one_go["accuracies"]  # bit for bit (floats from JSON)
    assert (resumed["mean"], resumed["std"]) == (one_go["mean"], one_go["std"])
    assert resumed["protocol"] == one_go["protocol"]
    assert sorted(recorded_runs(records)) == ["0", "1", "2"]


def test_text_output_names_the_records_and_the_resumed_runs(mnist_set, tiny_mnist, tmp_path):  # noqa: F811
    folder = tmp_path / "kept"
    first = eval_json(*eval_args(mnist_set, tiny_mnist, "--records", folder))
    assert "records" not in json.dumps(first)  # --json promises one result object, no path
    shown = invoke("evaluate", *eval_args(mnist_set, tiny_mnist, "--records", folder))
    assert shown.exit_code == 0, shown.output
    assert f"records: {folder}; convnet runs 1, 2, 3 resumed from there" in shown.stdout
    quiet = invoke("evaluate", *eval_args(mnist_set, tiny_mnist, "--records", folder, "-q"))
    assert quiet.stdout.strip() == f"{first['mean'] * 100:.2f} ± {first['std'] * 100:.2f} %"
    assert not mnist_set.with_name("set.eval").exists()


def test_no_records_keeps_nothing(mnist_set, tiny_mnist, tmp_path):  # noqa: F811
    shown = invoke("evaluate", *eval_args(mnist_set, tiny_mnist, "--no-records"))
    assert shown.exit_code == 0 and "records:" not in shown.stdout
    assert not mnist_set.with_name("set.eval").exists()
    both = invoke("evaluate", *eval_args(mnist_set, tiny_mnist, "--no-records", "--records", "x"))
    assert_one_line_error(both, "--records", "--no-records")


def test_a_baseline_keeps_its_records_in_the_data_folder(tiny_mnist):
    args = ("--baseline", "random", "--dataset", "mnist", "--data-dir", tiny_mnist,
            "--no-download", "--ipc", "1", "--runs", "2", "--epochs", "1", "--test-subset", "10",
            "--device", "cpu")  # fmt: skip
    first = eval_json(*args)
    assert len(recorded_runs(evaluate.default_records_dir(None))) == 2
    shown = invoke("evaluate", *args)
    assert "convnet runs 1, 2 resumed from there" in shown.stdout
    assert eval_json(*args)["accuracies"] == first["accuracies"]


def test_crossarch_resumes_the_architectures_already_evaluated(mnist_set, tiny_mnist):  # noqa: F811
    args = ("crossarch", mnist_set, "--data-dir", tiny_mnist, "--no-download", "--epochs", "1",
            "--runs", "2", "--test-subset", "10", "--device", "cpu")  # fmt: skip
    first = invoke(*args, "--archs", "convnet", "--json")
    assert first.exit_code == 0, first.output
    both = invoke(*args, "--archs", "convnet,convnet-bn")
    assert both.exit_code == 0, both.output
    folder = evaluate.default_records_dir(mnist_set)
    assert f"records: {folder}; convnet runs 1, 2 resumed from there" in both.stdout
    assert "convnet-bn runs" not in both.stdout  # trained now, not resumed
    again = json.loads(invoke(*args, "--archs", "convnet,convnet-bn", "--json").stdout)
    convnet = json.loads(first.stdout)["results"]["convnet"]
    assert again["results"]["convnet"]["accuracies"] == convnet["accuracies"]
    assert len(list(folder.glob("*.json"))) == 2  # one file per architecture


def test_an_unwritable_default_folder_means_no_records_and_a_note(
    mnist_set,  # noqa: F811
    tiny_mnist,
    monkeypatch,
):
    from ddpp_cli.commands import _evaluation

    assert _evaluation._writable(mnist_set.parent / "new" / "deeper")  # created on first run
    monkeypatch.setattr(_evaluation, "_writable", lambda folder: False)  # e.g. read-only share
    shown = invoke("evaluate", *eval_args(mnist_set, tiny_mnist))
    assert shown.exit_code == 0, shown.output
    assert "cannot keep records in" in shown.output and "--records DIR" in shown.output
    assert "records:" not in shown.stdout
    assert not mnist_set.with_name("set.eval").exists()


def test_records_name_their_versions_and_device_and_the_table_says_when_they_differ(
    mnist_set,  # noqa: F811
    tiny_mnist,
    tmp_path,
):
    import torch

    from ddpp_cli import __version__

    folder = tmp_path / "kept"
    first = eval_json(*eval_args(mnist_set, tiny_mnist, "--records", folder))
    assert first["provenance"] == {"reused_runs": [], "made_elsewhere": []}
    runs = recorded_runs(folder)
    for entry in runs.values():
        assert entry["ddpp_version"] == __version__
        assert entry["torch_version"] == torch.__version__
        assert entry["device"] == "cpu"
    same = eval_json(*eval_args(mnist_set, tiny_mnist, "--records", folder))
    assert same["provenance"] == {"reused_runs": [0, 1, 2], "made_elsewhere": []}
    shown = invoke("evaluate", *eval_args(mnist_set, tiny_mnist, "--records", folder))
    assert "reused from records made with" not in shown.stdout

    path = next(folder.glob("*.json"))  # run 2 as another installation made it
    content = json.loads(path.read_text())
    content["runs"]["1"].update(torch_version="2.6.0", device="cuda:0")
    del content["runs"]["2"]["ddpp_version"]  # a record from before ddpp kept versions
    path.write_text(json.dumps(content))
    other = eval_json(*eval_args(mnist_set, tiny_mnist, "--records", folder))
    assert other["accuracies"] == first["accuracies"]
    assert other["provenance"]["made_elsewhere"] == [
        {"run": 1, "ddpp": __version__, "torch": "2.6.0", "device": "cuda:0"},
        {"run": 2, "ddpp": "unknown", "torch": torch.__version__, "device": "cpu"},
    ]
    shown = invoke("evaluate", *eval_args(mnist_set, tiny_mnist, "--records", folder))
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())
    assert "run(s) 2, 3 reused from records made with" in text
    assert f"ddpp {__version__}, torch 2.6.0, cuda:0" in text
    assert f"ddpp unknown, torch {torch.__version__}, cpu" in text
