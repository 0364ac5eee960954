"""``ddpp evaluate --baseline forgetting|herding`` and ``--import`` end to end on tiny data.

Forgetting and herding train a selection network first; here it trains for one or two epochs on
the 100 tiny-MNIST images (or herding takes the session's tiny buffer's expert), so every test
runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from test_baselines import cheap_zca
from test_cli_evaluate import eval_json, invoke
from test_foreign import Payload, save_as_res
from test_mtt_import import tiny_cifar  # noqa: F401 (fixture)

from ddpp_cli.commands import evaluate as evaluate_command
from ddpp_cli.commands._evaluate_sources import CHOICE_OPTIONS, BaselineOpt
from ddpp_cli.engine import baselines, coresets, data, distilled
from ddpp_cli.engine import buffer as buffer_engine
from ddpp_cli.engine.distilled import file_sha256
from ddpp_cli.engine.preprocess import Normalization

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ("--epochs", "1", "--runs", "2", "--test-subset", "10", "--device", "cpu")


def baseline_args(data_dir: Path, method: str, *extra: object) -> tuple:
    return ("--baseline", method, "--dataset", "mnist", "--data-dir", data_dir,
            "--no-download", "--ipc", "2", *FAST, *extra)  # fmt: skip


# ------------------------------------------------------------------------------ forgetting


@pytest.mark.slow
def test_forgetting_baseline_is_saved_with_its_settings_and_resumes(tiny_mnist, tmp_path):
    out = tmp_path / "forgetting.safetensors"
    args = baseline_args(
        tiny_mnist, "forgetting", "--forgetting-epochs", "2", "--train-subset", "40"
    )
    payload = eval_json(*args, "--save", out)
    assert payload["set"] == str(out) and payload["protocol"]["source"] == "forgetting"
    recorded = payload["protocol"]["baseline"]
    assert recorded["forgetting_epochs"] == 2 and "feature_epochs" not in recorded
    saved = distilled.load(out)
    assert saved.source == "forgetting" and saved.lr is None and saved.ipc == 2
    settings = saved.settings["forgetting"]
    assert settings["arch"] == "convnet" and settings["epochs"] == 2 and settings["seed"] == 0
    assert settings["counts_source"] == "trained on the pool" and settings["pool_size"] == 40
    assert len(settings["selected_counts"]) == 20
    assert settings == recorded["forgetting"]
    # The set is the engine's forgetting selection for these settings.
    config = baselines.BaselineConfig(
        "forgetting", "mnist", 2, train_subset=40, forgetting_epochs=2
    )
    engine = baselines.prepare_baseline(config, data_root=tiny_mnist, download=False)
    assert torch.equal(saved.images, engine.train.images[engine.indices(0)])
    # A rerun takes both runs from the evaluation records and gives the same numbers.
    shown = invoke("evaluate", *args)
    assert shown.exit_code == 0, shown.output
    assert "convnet runs 1, 2 resumed from there" in shown.stdout
    # The forgetting counts were kept too: the rerun trains no network to choose again.
    assert "selection taken from" in shown.output and "forgetting counts" not in shown.output
    assert eval_json(*args)["accuracies"] == payload["accuracies"]


# -------------------------------------------------------------------------------- herding


@pytest.mark.slow
def test_herding_without_a_buffer_trains_its_feature_network_and_says_so(tiny_mnist, tmp_path):
    out = tmp_path / "herding.safetensors"
    args = baseline_args(tiny_mnist, "herding", "--feature-epochs", "1", "--train-subset", "40")
    payload = eval_json(*args, "--save", out)
    features = distilled.load(out).settings["features"]
    assert features["kind"] == "trained" and features["epochs"] == 1
    assert features["arch"] == "convnet" and features["l2_normalize"] is False
    assert payload["protocol"]["baseline"]["features"] == features
    assert payload["protocol"]["baseline"]["feature_epochs"] == 1


def test_herding_with_a_buffer_uses_its_expert_and_its_data(tiny_mnist, tiny_buffer, tmp_path):
    out = tmp_path / "herding.safetensors"
    payload = eval_json(
        *baseline_args(tiny_mnist, "herding", "--buffer", tiny_buffer, "--l2-normalize"),
        "--save", out,
    )  # fmt: skip
    saved = distilled.load(out)
    features = saved.settings["features"]
    expert = buffer_engine.expert_path(tiny_buffer, 0)
    assert features["kind"] == "expert" and features["expert_file"] == str(expert.resolve())
    assert features["expert_sha256"] == file_sha256(expert) and features["snapshot"] == 3
    assert features["l2_normalize"] is True
    assert payload["protocol"]["baseline"]["buffer"] == str(tiny_buffer.resolve())
    assert "feature_epochs" not in payload["protocol"]["baseline"]  # nothing was trained
    # The data as the experts saw them: 8×8, the buffer's normalisation; evaluable again.
    assert tuple(saved.images.shape[1:]) == (1, 8, 8) and saved.settings["image_size"] == 8
    manifest = buffer_engine.read_manifest(tiny_buffer)
    assert saved.preprocessing == manifest.preprocessing
    again = eval_json(out, "--data-dir", tiny_mnist, "--no-download", *FAST, "--no-records")
    assert again["accuracies"] == payload["accuracies"]


def test_any_baseline_takes_the_data_as_a_buffer_made_them(tiny_mnist, tiny_buffer, tmp_path):
    out = tmp_path / "random.safetensors"
    payload = eval_json(*baseline_args(tiny_mnist, "random", "--buffer", tiny_buffer),
                        "--save", out)  # fmt: skip
    saved = distilled.load(out)
    assert tuple(saved.images.shape[1:]) == (1, 8, 8) and payload["protocol"]["image_shape"][1] == 8
    assert saved.preprocessing == buffer_engine.read_manifest(tiny_buffer).preprocessing
    assert payload["protocol"]["baseline"]["image_size"] == saved.settings["image_size"] == 8


def test_herding_random_keeps_the_random_network_features(tiny_mnist, tmp_path):
    out = tmp_path / "h.safetensors"
    eval_json(*baseline_args(tiny_mnist, "herding-random"), "--save", out)
    saved = distilled.load(out)
    assert saved.source == "herding-random"
    assert saved.settings["features"] == {"kind": "random-init", "arch": "convnet", "seed": 0}


# ------------------------------------------------------------------- options and wiring


def test_baseline_options_reach_the_config(tiny_mnist, tiny_buffer, monkeypatch):
    built = []

    def capture(config, *args):
        built.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(evaluate_command, "_evaluate_baseline", capture)
    invoke("evaluate", *baseline_args(tiny_mnist, "forgetting", "--forgetting-epochs", "7",
                                      "--train-subset", "50", "--seed", "3"))  # fmt: skip
    invoke("evaluate", *baseline_args(tiny_mnist, "herding", "--feature-epochs", "4"))
    invoke("evaluate", *baseline_args(tiny_mnist, "HERDING", "--buffer", tiny_buffer))
    forgetting, herding, expert = built
    assert (forgetting.method, forgetting.forgetting_epochs) == ("forgetting", 7)
    assert (forgetting.train_subset, forgetting.seed) == (50, 3)
    assert (herding.feature_epochs, herding.buffer) == (4, None)
    assert expert.method == "herding" and expert.buffer == tiny_buffer
    assert expert.feature_epochs == coresets.HERDING_FEATURE_EPOCHS == 50
    assert herding.forgetting_epochs == coresets.FORGETTING_EPOCHS == 200  # not given: defaults


DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("name", coresets.list_coresets())
def test_every_registered_coreset_is_reachable_and_documented(name, tiny_mnist, monkeypatch):
    """``--baseline NAME`` (a setting of another coreset: ``--baseline BASE`` with its preset
    options) reaches the BaselineConfig; --baseline's help names it, evaluate takes each of its
    options, and docs/evaluation.md or docs/methods.md describe it and its options."""
    info = coresets.get_coreset(name)
    built = []

    def capture(config, *args):
        built.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(evaluate_command, "_evaluate_baseline", capture)
    preset = [arg for option, value in info.preset for arg in (flag(option), value)]
    invoke("evaluate", *baseline_args(tiny_mnist, info.method, *preset))
    (config,) = built
    assert config.method == info.method
    assert all(getattr(config, option) == value for option, value in info.preset)
    choices = coresets.list_coresets(settings=False)
    assert info.method in choices and (info.base is not None or name in choices)
    assert coresets.get_coreset(info.method).help in BaselineOpt.__metadata__[0].help
    for option in info.options:
        assert "--baseline" in CHOICE_OPTIONS[option]
    docs = (DOCS / "evaluation.md").read_text() + (DOCS / "methods.md").read_text()
    assert f"`{name}`" in docs
    for option in info.options:
        assert flag(option) in docs


def flag(option: str) -> str:
    """The ``ddpp evaluate`` option of a BaselineConfig field, e.g. ``--l2-normalize``."""
    return "--" + option.replace("_", "-")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--baseline", "herding", "--forgetting-epochs", "2"), "--forgetting-epochs only"),
        (("--baseline", "forgetting", "--feature-epochs", "2"), "--feature-epochs only"),
        (("--baseline", "random", "--l2-normalize"), "--l2-normalize only"),
        (("--baseline", "forgetting", "--forgetting-epochs", "0"), "at least 1"),
        (("--baseline", "herding", "--forgetting-unlearned", "deepcore"), "only applies"),
        (("--baseline", "forgetting", "--forgetting-unlearned", "never"), "toneva, deepcore"),
        (("--baseline", "herding", "--experiment", "1"), "--experiment only apply with --import"),
        (("--import", "x.pt", "--ipc", "1"), "--ipc only apply with --baseline"),
        (("--baseline", "random", "--import", "x.pt"), "not both"),
        (("--baseline", "random", "--buffer", "."), "not a ddpp buffer"),
    ],
)
def test_options_of_another_choice_are_refused(extra, fragment, tiny_mnist):
    args = ("--dataset", "mnist", "--data-dir", tiny_mnist, "--no-download", *FAST)
    if "--baseline" in extra:
        args = (*args, "--ipc", "1")
    assert_one_line_error(invoke("evaluate", *extra, *args), fragment)


def test_a_buffer_of_another_dataset_or_with_another_zca_is_refused(tiny_mnist, tiny_buffer):
    args = ("--baseline", "herding", "--ipc", "1", "--buffer", tiny_buffer, *FAST)
    other = invoke("evaluate", *args, "--dataset", "fashionmnist")
    assert_one_line_error(other, "made for dataset 'mnist'")
    both = invoke("evaluate", *args, "--dataset", "mnist", "--zca-file", tiny_buffer / "x")
    assert_one_line_error(both, "--zca-file PATH and --buffer")


# ---------------------------------------------------------------------------------- import


def mnist_images(root: Path, per_class: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first tiny-MNIST train images of each class, normalised as MNIST sets are."""
    train = data.load("mnist", root, "train", download=False)
    index = torch.cat([torch.nonzero(train.labels == k).flatten()[:per_class] for k in range(10)])
    return Normalization((0.1307,), (0.3081,)).apply(train.images[index]), train.labels[index]


def test_an_mtt_set_is_imported_evaluated_and_saved(tiny_mnist, tmp_path):
    images, labels = mnist_images(tiny_mnist)
    folder = tmp_path / "mtt-run"
    folder.mkdir()
    torch.save(images, folder / "images_best.pt")
    torch.save(labels, folder / "labels_best.pt")
    torch.save(torch.tensor(0.02), folder / "lr_best.pt")
    out = tmp_path / "imported.safetensors"
    args = ("--dataset", "mnist", "--data-dir", tiny_mnist, "--no-download", *FAST)
    payload = eval_json("--import", folder, *args, "--save", out)
    assert payload["set"] == str(out) and payload["protocol"]["source"] == "import-mtt"
    assert payload["lr"] == pytest.approx(0.02) and payload["protocol"]["lr_source"] == "set"
    saved = distilled.load(out)
    assert torch.equal(saved.images, images) and saved.lr == pytest.approx(0.02)
    assert saved.settings["imported"]["lr"]["sha256"] == file_sha256(folder / "lr_best.pt")
    assert saved.preprocessing["kind"] == "normalize"
    # Evaluating the saved file gives what the import gave (same set, same protocol).
    again = eval_json(out, "--data-dir", tiny_mnist, "--no-download", *FAST, "--no-records")
    assert again["accuracies"] == payload["accuracies"]
    # ZCA-whitened MTT images are imported with the ZCA they were whitened with.
    zca_file = cheap_zca("mnist", tmp_path / "zca.safetensors")
    whitened = eval_json("--import", folder / "images_best.pt", *args, "--zca-file", zca_file)
    assert whitened["protocol"]["preprocessing"] == "zca"


def test_a_set_made_at_another_size_imports_with_image_size(tiny_mnist, tmp_path):
    images, labels = mnist_images(tiny_mnist)
    small = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear")
    torch.save(small, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    args = ("--import", tmp_path, "--dataset", "mnist", "--data-dir", tiny_mnist,
            "--no-download", *FAST, "--no-records")  # fmt: skip
    refused = invoke("evaluate", *args)
    assert_one_line_error(refused, "(1, 16, 16)", "(1, 28, 28)", "--image-size")
    out = tmp_path / "small.safetensors"
    payload = eval_json(*args, "--image-size", "16", "--save", out)
    assert payload["protocol"]["image_shape"] == [1, 16, 16]  # tested at the set's size
    assert distilled.load(out).settings["image_size"] == 16
    coreset = tmp_path / "coreset.safetensors"
    eval_json(*baseline_args(tiny_mnist, "random", "--image-size", "16", "--save", coreset))
    assert distilled.load(coreset).images.shape[-2:] == (16, 16)


def test_a_dc_result_file_is_imported_by_experiment(tiny_mnist, tmp_path):
    images, labels = mnist_images(tiny_mnist, per_class=2)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    experiments = [[images[:10] * 0, labels[:10]], [images[order], labels[order]]]
    experiments[0][1] = torch.arange(10)
    torch.save({"data": experiments, "accs_all_exps": {"ConvNet": [0.5, 0.6]}},
               tmp_path / "res_DSA_MNIST_ConvNet_2ipc.pt")  # fmt: skip
    out = tmp_path / "dsa.safetensors"
    args = ("--dataset", "mnist", "--data-dir", tiny_mnist, "--no-download", *FAST)
    payload = eval_json("--import", tmp_path / "res_DSA_MNIST_ConvNet_2ipc.pt", *args,
                        "--experiment", "1", "--save", out)  # fmt: skip
    assert payload["protocol"]["source"] == "import-dc" and payload["protocol"]["ipc"] == 2
    saved = distilled.load(out)
    assert saved.lr is None and saved.settings["imported"]["experiment"] == 1
    class_major = torch.sort(labels[order], stable=True).indices  # as ddpp's sets are
    assert torch.equal(saved.images, images[order][class_major])
    assert torch.equal(saved.labels, labels)
    too_far = invoke("evaluate", "--import", tmp_path, *args, "--experiment", "2")
    assert_one_line_error(too_far, "holds 2 experiment(s)")


@pytest.mark.parametrize("name", ["images_best.pt", "res_DC.pt"])
def test_a_malicious_pickle_is_refused_with_one_line_and_never_runs(name, tiny_mnist, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / name
    if name.startswith("images_"):
        torch.save(Payload(marker), evil)
        torch.save(torch.arange(10), tmp_path / "labels_best.pt")
    else:
        torch.save({"data": [[Payload(marker), torch.arange(10)]]}, evil)
    result = invoke("evaluate", "--import", evil, "--dataset", "mnist", "--data-dir", tiny_mnist,
                    "--no-download", *FAST)  # fmt: skip
    assert_one_line_error(result, "never arbitrary pickles")
    assert not marker.exists()
    # The file is live: an unsafe load would have created the marker.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_an_mtt_set_without_lr_best_says_which_lr_it_trains_at(tiny_mnist, tmp_path):
    images, labels = mnist_images(tiny_mnist)
    torch.save(images.clone().requires_grad_(True), tmp_path / "images_best.pt")  # as MTT does
    torch.save(labels, tmp_path / "labels_best.pt")  # and no lr_best.pt: distill.py saves none
    args = ("--import", tmp_path, "--dataset", "mnist", "--data-dir", tiny_mnist,
            "--no-download", *FAST, "--no-records")  # fmt: skip
    told = ("lr 0.01, the default: MTT's distill.py saves no learned lr; pass --lr with the "
            "Synthetic_LR of its log.")  # fmt: skip
    shown = invoke("evaluate", *args)
    assert shown.exit_code == 0, shown.output
    assert f"note: {told}" in " ".join(shown.stdout.split())
    payload = eval_json(*args)
    assert payload["lr_note"] == told
    assert payload["lr"] == 0.01 and payload["protocol"]["lr_source"] == "default"
    given = eval_json(*args, "--lr", "0.02")
    assert "lr_note" not in given and given["protocol"]["lr_source"] == "--lr"
    # The saved set, evaluated later, says it too.
    eval_json(*args, "--save", tmp_path / "mtt.safetensors")
    assert eval_json(tmp_path / "mtt.safetensors", *args[4:])["lr_note"] == told
    torch.save({"data": [[images, labels]]}, tmp_path / "res.pt")  # DC learns no lr: no note
    dc = eval_json("--import", tmp_path / "res.pt", *args[2:])
    assert "lr_note" not in dc and dc["lr"] == 0.01


def test_a_cafe_cifar100_set_is_saved_with_cifar10s_normalization(tiny_cifar, tmp_path):  # noqa: F811
    res = save_as_res(tmp_path / "res_DC_CIFAR100_ConvNet_1ipc.pt", 100, label_dtype=torch.int)
    out = tmp_path / "cafe.safetensors"
    args = ("--import", res, "--dataset", "cifar100", "--no-download", "--no-zca", *FAST,
            "--no-records", "--save", out)  # fmt: skip
    payload = eval_json(*args, "--import-kind", "cafe")
    assert payload["protocol"]["source"] == "import-cafe" and "lr_note" not in payload
    cifar10 = data.info("cifar10")
    saved = distilled.load(out)
    assert (saved.preprocessing["mean"], saved.preprocessing["std"]) == (
        list(cifar10.mean), list(cifar10.std)
    )  # fmt: skip
    # Read as DC's (the name alone cannot tell), the same file keeps CIFAR-100's own.
    eval_json(*args, "--force")
    assert distilled.load(out).preprocessing["mean"] == list(data.info("cifar100").mean)


def test_json_of_an_import_is_one_object(tiny_mnist, tmp_path):
    images, labels = mnist_images(tiny_mnist)
    torch.save({"data": [[images, labels]]}, tmp_path / "res.pt")
    result = invoke("evaluate", "--import", tmp_path / "res.pt", "--dataset", "mnist",
                    "--data-dir", tiny_mnist, "--no-download", *FAST, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["protocol"]["source"] == "import-dc"
