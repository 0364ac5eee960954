"""``ddpp evaluate`` and ``ddpp crossarch`` end to end on tiny data (never downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from PIL import Image
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import data, distilled, models, zca
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.preprocess import Normalization

runner = CliRunner()
FAST = ("--epochs", "1", "--runs", "1", "--test-subset", "10", "--device", "cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def write_mnist_set(root: Path, path: Path, ipc: int = 1, **changes) -> Path:
    """A normalised set of the first ``ipc`` tiny-MNIST train images per class."""
    train = data.load("mnist", root, "train", download=False)
    index = torch.cat([torch.nonzero(train.labels == k).flatten()[:ipc] for k in range(10)])
    fields = {
        "images": Normalization((0.1307,), (0.3081,)).apply(train.images[index]),
        "labels": train.labels[index],
        "lr": 0.01,
        "dataset": "mnist",
        "class_names": train.class_names,
        "preprocessing": {"kind": "normalize", "mean": [0.1307], "std": [0.3081]},
        "source": "distill",
        "arch": "convnet",
    }
    fields.update(changes)
    return distilled.save(path, DistilledSet(**fields))


@pytest.fixture
def mnist_set(tiny_mnist, tmp_path) -> Path:
    return write_mnist_set(tiny_mnist, tmp_path / "set.safetensors")


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory) -> Path:
    """An image-folder dataset of 3-channel 32×32 images: 2 classes, 4 train / 3 test each."""
    root = tmp_path_factory.mktemp("rgb")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 4), ("test", 3)):
        for label, name in enumerate(("red", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 80, (32, 32, 3), generator=generator, dtype=torch.uint8)
                pixels[..., 2 * label] += 150
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def eval_json(*args: object) -> dict:
    result = invoke("evaluate", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout


# ---------------------------------------------------------------------------- evaluate


def test_evaluate_prints_every_run_and_the_mean(mnist_set, tiny_mnist):
    result = invoke(
        "evaluate", mnist_set, "--data-dir", tiny_mnist, "--no-download", "--epochs", "2",
        "--runs", "2", "--test-subset", "20", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mean ± std" in result.stdout and "population std" in result.stdout
    assert "2 epochs" in result.stdout and "lr 0.01 (set)" in result.stdout


def test_json_is_one_object_with_protocol_runs_mean_std_seconds(mnist_set, tiny_mnist):
    payload = eval_json(
        mnist_set, "--data-dir", tiny_mnist, "--no-download", "--epochs", "2", "--runs", "2",
        "--test-subset", "20", "--device", "cpu", "--lr", "0.02", "--no-dsa",
    )  # fmt: skip
    assert {"protocol", "accuracies", "mean", "std", "seconds"} <= set(payload)
    assert len(payload["accuracies"]) == 2 and payload["seconds"] > 0
    assert payload["mean"] == pytest.approx(sum(payload["accuracies"]) / 2)
    protocol = payload["protocol"]
    assert protocol["epochs"] == 2 and protocol["runs"] == 2 and protocol["lr"] == 0.02
    assert protocol["lr_source"] == "--lr" and protocol["dsa_strategy"] == "none"
    assert protocol["momentum"] == 0.9 and protocol["weight_decay"] == 5e-4
    assert protocol["batch_size"] == 256 and protocol["test_size"] == 20
    assert payload["set"] == str(mnist_set)


def test_a_run_folder_is_evaluated_through_its_set(mnist_set, tiny_mnist, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(mnist_set, run / "distilled.safetensors")
    payload = eval_json(run, "--data-dir", tiny_mnist, "--no-download", *FAST)
    assert payload["set"].endswith("distilled.safetensors")


def test_quiet_prints_only_the_result(mnist_set, tiny_mnist):
    result = invoke("evaluate", mnist_set, "--data-dir", tiny_mnist, "--no-download", *FAST, "-q")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1 and "±" in result.stdout


@pytest.mark.slow
def test_resnet18_on_a_one_channel_28px_set(mnist_set, tiny_mnist):
    payload = eval_json(
        mnist_set, "--data-dir", tiny_mnist, "--no-download", "--arch", "resnet18", *FAST
    )
    assert payload["arch"] == "resnet18"
    assert payload["protocol"]["image_shape"] == [1, 28, 28]


def test_resnet18_on_a_three_channel_32px_set(rgb_folder, tmp_path):
    coreset = tmp_path / "rgb.safetensors"
    payload = eval_json(
        "--baseline", "random", "--dataset", "imagefolder", "--data-dir", rgb_folder,
        "--ipc", "2", "--save", coreset, "--epochs", "1", "--runs", "1", "--device", "cpu",
    )  # fmt: skip
    assert payload["set"] == str(coreset) and coreset.is_file()
    payload = eval_json(coreset, "--data-dir", rgb_folder, "--arch", "resnet18", *FAST)
    assert payload["arch"] == "resnet18" and payload["protocol"]["image_shape"] == [3, 32, 32]
    assert payload["protocol"]["test_size"] == 6


def test_a_zca_set_without_its_zca_is_refused(tiny_mnist, tmp_path):
    eye = torch.eye(784)
    whitening = zca.ZCA(torch.full((784,), 0.3), 2 * eye, 0.5 * eye, (1, 28, 28))
    zca_file = zca.save(whitening, tmp_path / "zca.safetensors", {"dataset": "mnist"})
    path = write_mnist_set(
        tiny_mnist, tmp_path / "zca-set.safetensors",
        preprocessing=distilled.zca_reference(zca_file),
    )  # fmt: skip
    ok = invoke("evaluate", path, "--data-dir", tiny_mnist, "--no-download", *FAST, "-q")
    assert ok.exit_code == 0, ok.output
    moved = zca_file.rename(tmp_path / "moved.safetensors")
    result = invoke("evaluate", path, "--data-dir", tiny_mnist, "--no-download", *FAST)
    assert_one_line_error(result, "ZCA", "--zca-file")
    again = invoke(
        "evaluate", path, "--zca-file", moved, "--data-dir", tiny_mnist, "--no-download", *FAST,
        "-q",
    )  # fmt: skip
    assert again.exit_code == 0, again.output


def test_mismatched_shape_classes_or_dataset_are_refused(tiny_mnist, tmp_path):
    big = write_mnist_set(
        tiny_mnist, tmp_path / "big.safetensors", images=torch.zeros(10, 1, 32, 32)
    )
    assert_one_line_error(
        invoke("evaluate", big, "--data-dir", tiny_mnist, "--no-download", *FAST),
        "1×32×32", "1×28×28",
    )  # fmt: skip
    train = data.load("mnist", tiny_mnist, "train", download=False)
    five = write_mnist_set(
        tiny_mnist, tmp_path / "five.safetensors", labels=torch.arange(10) % 5,
        class_names=train.class_names[:5],
    )  # fmt: skip
    assert_one_line_error(
        invoke("evaluate", five, "--data-dir", tiny_mnist, "--no-download", *FAST), "5 classes"
    )
    unknown = write_mnist_set(tiny_mnist, tmp_path / "unknown.safetensors", dataset="mnist2")
    assert_one_line_error(
        invoke("evaluate", unknown, "--data-dir", tiny_mnist, "--no-download", *FAST),
        "unknown dataset 'mnist2'",
    )  # fmt: skip
    eye = torch.eye(784)
    whitening = zca.ZCA(torch.full((784,), 0.3), 2 * eye, 0.5 * eye, (1, 28, 28))
    fashion_zca = zca.save(whitening, tmp_path / "f.safetensors", {"dataset": "fashionmnist"})
    zca_set = write_mnist_set(
        tiny_mnist, tmp_path / "zca-set.safetensors",
        preprocessing=distilled.zca_reference(fashion_zca),
    )  # fmt: skip
    assert_one_line_error(
        invoke("evaluate", zca_set, "--data-dir", tiny_mnist, "--no-download", *FAST),
        "fitted on fashionmnist",
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((), "nothing to evaluate"),
        (("--baseline", "random", "--dataset", "mnist"), "--ipc"),
        (("--baseline", "kcenter", "--dataset", "mnist", "--ipc", "1"), "unknown baseline"),
        (("--baseline", "random", "--dataset", "mnist", "--ipc", "0"), "--ipc"),
        (("--baseline", "random", "--dataset", "mnist", "--ipc", "50"), "--ipc 50 is more"),
        (("--ipc", "1"), "only apply with --baseline"),
        (("--arch", "lenet", "--baseline", "random", "-d", "mnist", "--ipc", "1"), "lenet"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, tiny_mnist):
    result = invoke("evaluate", *args, "--data-dir", tiny_mnist, "--no-download", *FAST)
    assert_one_line_error(result, fragment)


def test_a_set_and_a_baseline_together_are_refused(mnist_set, tiny_mnist):
    result = invoke("evaluate", mnist_set, "--baseline", "random", "-d", "mnist", "--ipc", "1")
    assert_one_line_error(result, "not both")


@pytest.mark.slow
def test_herding_baseline_is_saved_as_a_set(tiny_mnist, tmp_path):
    out = tmp_path / "herding.safetensors"
    payload = eval_json(
        "--baseline", "herding", "--dataset", "mnist", "--data-dir", tiny_mnist,
        "--no-download", "--ipc", "2", "--save", out, "--feature-epochs", "1", *FAST,
        "--image-size", "8",  # a fast feature network: nothing here depends on the size
    )  # fmt: skip
    assert payload["protocol"]["source"] == "herding" and payload["protocol"]["ipc"] == 2
    saved = distilled.load(out)
    assert saved.source == "herding" and saved.lr is None and saved.ipc == 2
    assert saved.preprocessing["kind"] == "normalize"


def test_save_refuses_an_existing_file_unless_force(tiny_mnist, tmp_path):
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"made by the user")
    args = ("--baseline", "random", "--dataset", "mnist", "--data-dir", tiny_mnist,
            "--no-download", "--ipc", "1", "--save", out, *FAST)  # fmt: skip
    assert_one_line_error(invoke("evaluate", *args), str(out), "--force")
    assert out.read_bytes() == b"made by the user"
    eval_json(*args, "--force")
    assert distilled.load(out).source == "random"
    assert_one_line_error(invoke("evaluate", "x.safetensors", "--force"), "--force")


# --------------------------------------------------------------------------- crossarch


def test_crossarch_json_and_markdown(mnist_set, tiny_mnist):
    args = ("crossarch", mnist_set, "--archs", "convnet,alexnet", "--data-dir", tiny_mnist,
            "--no-download", *FAST)  # fmt: skip
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["archs"] == ["convnet", "alexnet"]
    for arch in ("convnet", "alexnet"):
        entry = payload["results"][arch]
        assert {"accuracies", "mean", "std", "seconds", "protocol"} <= set(entry)
        assert entry["protocol"]["arch"] == arch
    markdown = invoke(*args, "--markdown")
    assert markdown.exit_code == 0, markdown.output
    lines = markdown.stdout.strip().splitlines()
    assert lines[0] == "| set | convnet | alexnet |" and lines[1].startswith("|---|")
    assert lines[2].startswith("| distill IPC 1 |") and lines[2].count("±") == 2
    table = invoke(*args)
    assert table.exit_code == 0 and "Cross-architecture" in table.stdout
    assert_one_line_error(invoke(*args, "--json", "--markdown"), "--markdown")
    assert_one_line_error(invoke("crossarch", mnist_set, "--archs", "convnet,nope", *FAST), "nope")


# ---------------------------------------------------------------------------- --parallel


@pytest.mark.slow
def test_parallel_runs_print_the_sequential_accuracies(mnist_set, tiny_mnist):
    args = (mnist_set, "--data-dir", tiny_mnist, "--no-download", "--epochs", "2", "--runs",
            "3", "--test-subset", "20", "--device", "cpu")  # fmt: skip
    one = eval_json(*args)
    many = eval_json(*args, "--parallel", "2", "--no-records")  # trained, not read back
    assert many["accuracies"] == one["accuracies"]
    shown = invoke("evaluate", *args, "--parallel", "3")
    assert shown.exit_code == 0 and "mean ± std" in shown.stdout
    assert_one_line_error(invoke("evaluate", *args, "--parallel", "0"), "--parallel")


@pytest.mark.slow
def test_crossarch_and_baselines_take_parallel(mnist_set, tiny_mnist):
    result = invoke(
        "crossarch", mnist_set, "--archs", "convnet,convnet-bn", "--data-dir", tiny_mnist,
        "--no-download", "--epochs", "1", "--runs", "2", "--test-subset", "10", "--device",
        "cpu", "--parallel", "2", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert all(len(r["accuracies"]) == 2 for r in json.loads(result.stdout)["results"].values())
    payload = eval_json(
        "--baseline", "random", "--dataset", "mnist", "--data-dir", tiny_mnist, "--no-download",
        "--ipc", "1", "--runs", "2", "--epochs", "1", "--parallel", "2", *FAST[4:],
    )  # fmt: skip
    assert len(payload["accuracies"]) == 2


def test_crossarch_trains_convnets_of_any_width_and_shows_their_size(mnist_set, tiny_mnist):
    args = ("crossarch", mnist_set, "--archs", "convnet,convnet-w32", "--data-dir", tiny_mnist,
            "--no-download", *FAST)  # fmt: skip
    payload = json.loads(invoke(*args, "--json").stdout)
    assert payload["archs"] == ["convnet", "convnet-w32"]
    image = tuple(payload["results"]["convnet"]["protocol"]["image_shape"])  # (C, H, W)
    for arch in ("convnet", "convnet-w32"):
        expected = models.parameter_count(arch, image[0], 10, image[1:])
        assert payload["results"][arch]["protocol"]["parameters"] == expected
    assert (
        payload["results"]["convnet-w32"]["protocol"]["parameters"]
        < (payload["results"]["convnet"]["protocol"]["parameters"])
    )
    shown = " ".join(invoke(*args).stdout.split())
    small = payload["results"]["convnet-w32"]["protocol"]["parameters"]
    assert f"convnet-w32 ({small:,} parameters): " in shown
    assert "protocol: each architecture, 1 epochs" in shown
