"""``ddpp distill --method kip``: its preset, its learned or fixed labels in the set and the
checkpoint, Adam's state, and a stopped run resuming bit for bit (generated data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run, ctrl_c_after
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import distill, distilled, store
from ddpp_cli.engine.errors import DdppError

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def small(**changes) -> distill.DistillConfig:
    """Three KIP iterations on 8×8 images: 4 target images per class, one 4-channel ConvNet."""
    values = {
        "iterations": 3, "image_size": 8, "batch_real": 4, "ensemble": 1, "kernel_width": 4,
        "eval_every": 2, "eval_runs": 1, "eval_epochs": 1, "test_runs": 0,
        "checkpoint_every": 1, **changes,
    }  # fmt: skip
    return distill.DistillConfig.from_preset("mnist", 1, method="kip", **values)


def run(config, folder: Path, data: Path, **kwargs) -> distill.DistillSummary:
    return distill.distill(config, folder, data_root=data, download=False, **kwargs)


def test_the_preset_is_kips():
    config = distill.DistillConfig.from_preset("cifar10", 10, method="kip")
    # KIP's colab: Adam lr 4e-2 (images and labels), 5000 targets = 500 per class, reg 1e-6.
    assert (config.lr_img, config.lr_labels, config.batch_real, config.krr_reg) == (
        0.04, 0.04, 500, 1e-6,
    )  # fmt: skip
    assert config.learn_labels is True and config.init == "real"
    assert (config.ensemble, config.kernel_width) == (4, 128)
    assert distill.get_method("kip").optimizer == "adam"


def test_kip_refuses_batchnorm_and_other_methods_refuse_its_settings():
    with pytest.raises(DdppError, match="BatchNorm"):
        small(arch="convnet-bn")
    with pytest.raises(DdppError, match="--ensemble does not apply to --method dm"):
        distill.DistillConfig.from_preset("mnist", 1, method="dm", ensemble=2)
    with pytest.raises(DdppError, match="--krr-reg must be a number"):
        small(krr_reg=float("nan"))


def test_learned_labels_change_and_are_saved_as_the_sets_mse_targets(tiny_mnist, tmp_path):
    run(small(iterations=2), tmp_path, tiny_mnist)
    saved = distilled.load(tmp_path / distill.DISTILLED_NAME)
    initial = torch.eye(10) - 0.1  # one-hot minus 1/K
    assert saved.targets is not None and saved.targets.shape == (10, 10)
    assert not torch.equal(saved.targets, initial)
    assert (saved.label_mode, saved.target_loss) == ("learned", "mse")
    assert torch.equal(saved.labels, torch.arange(10))  # the class each image was made for
    checkpoint = store.read(tmp_path / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    assert torch.equal(checkpoint.tensors["targets"], saved.targets)
    keys = {"adam_images_step", "adam_images_exp_avg", "adam_images_exp_avg_sq"}
    assert keys | {k.replace("images", "targets") for k in keys} <= checkpoint.tensors.keys()
    assert "momentum_images" not in checkpoint.tensors
    assert float(checkpoint.tensors["adam_images_step"][0]) == 2.0


def test_validation_trains_on_the_learned_labels_with_mse(tiny_mnist):
    """In-loop validation trains on what the set will carry (its evaluation does): the learned
    label vectors with MSE, named as the set names them; fixed labels validate as hard."""
    from ddpp_cli.engine.distill.setup import set_up_method

    def setup_of(config):
        return set_up_method(
            config, data_root=tiny_mnist, download=False, device=torch.device("cpu")
        )

    setup = setup_of(small())
    targets = torch.randn(10, 10, dtype=torch.float64)
    vectors = setup.label_vectors(targets)
    assert torch.equal(vectors.vectors, targets.float())
    assert (vectors.loss, vectors.temperature, vectors.text) == (
        "mse",
        None,
        "learned labels (MSE)",
    )
    images = torch.zeros(10, 1, 8, 8)
    assert vectors.text == setup.as_set(images, None, 0, targets).label_text
    assert setup_of(small(learn_labels=False)).label_vectors(None) is None


def test_fixed_labels_stay_hard_labels(tiny_mnist, tmp_path):
    run(small(iterations=2, learn_labels=False), tmp_path, tiny_mnist)
    saved = distilled.load(tmp_path / distill.DISTILLED_NAME)
    assert saved.targets is None and saved.label_mode == "hard"
    checkpoint = store.read(tmp_path / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    assert "targets" not in checkpoint.tensors


def test_the_images_move_and_the_loss_is_logged(tiny_mnist, tmp_path):
    run(small(iterations=2), tmp_path, tiny_mnist)
    lines = [json.loads(x) for x in (tmp_path / distill.METRICS_NAME).read_text().splitlines()]
    assert all(0.0 < line["loss"] < 1.0 for line in lines[1:])
    assert all(0.0 <= line["krr_accuracy"] <= 1.0 for line in lines[1:])


def test_a_stopped_run_resumes_bit_for_bit(tiny_mnist, tmp_path):
    config = small()
    run(config, tmp_path / "straight", tiny_mnist)

    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run(config, stopped, tiny_mnist, on_event=ctrl_c_after(3))
    assert store.read_metadata(stopped / distill.CHECKPOINT_NAME)["iteration"] == 2
    events = []
    run(config, stopped, tiny_mnist, on_event=events.append)
    started = next(e for e in events if isinstance(e, distill.DistillStarted))
    assert started.resumed and started.start_iteration == 2
    saved = store.read(tmp_path / "straight" / distill.CHECKPOINT_NAME, store.CHECKPOINT_FORMAT)
    assert {"targets", "adam_targets_exp_avg", "rng_matching"} <= saved.tensors.keys()
    assert_same_run(tmp_path / "straight", stopped)


def test_the_cli_runs_kip_with_fixed_labels(tiny_mnist, tmp_path):
    result = runner.invoke(app, [str(a) for a in [
        "distill", "--dataset", "mnist", "--ipc", 1, "--method", "kip", "--data-dir", tiny_mnist,
        "--no-download", "--out", tmp_path, "--image-size", 8, "--batch-real", 4,
        "--iterations", 1, "--ensemble", 1, "--kernel-width", 4, "--fixed-labels",
        "--eval-every", 0, "--test-runs", 0, "--quiet",
    ]])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = store.read_metadata(tmp_path / distill.CHECKPOINT_NAME)["config"]
    assert (config["learn_labels"], config["ensemble"], config["kernel_width"]) == (False, 1, 4)


def test_a_compare_row_shows_the_kernel_it_ran_with():
    from ddpp_cli.engine.compare.rows import ROWS, matching_cuts

    assert ROWS["kip"].label == "KIP (empirical NTK, preset 4 × ConvNet-w128)"
    quick = distill.get_method("kip").quick_cuts
    config = distill.DistillConfig.from_preset("fashionmnist", 1, method="kip", **quick)
    cuts = {cut.setting: (cut.value, cut.paper) for cut in matching_cuts(config)}
    assert cuts == {
        "batch_real": (quick["batch_real"], 500),
        "ensemble": (quick["ensemble"], 4),
        "kernel_width": (quick["kernel_width"], 128),
        "learn_labels": (False, True),
    }


def test_kip_whitens_with_its_own_zca_fitted_once_on_the_train_split(tiny_mnist, tmp_path):
    """--zca: the data is whitened with KIP's variant (fitted on the whole train split in [0, 1],
    kept under the data home and shared by later runs), and the set refers to that file."""
    from ddpp_cli.engine import data, layout, zca
    from ddpp_cli.engine.distill.setup import method_zca_path

    config = small(iterations=1, zca=True)
    run(config, tmp_path / "a", tiny_mnist)
    path = method_zca_path(config)
    assert path.parent == layout.data_home() / layout.ZCA_CACHE_DIRNAME and path.is_file()
    whitening = zca.load(path)
    assert whitening.variant == "kip"
    train = data.load("mnist", tiny_mnist, "train", download=False, image_size=8, seed=0)
    expected = zca.fit_kip(train.images)  # the whole train split, not the validation-free pool
    assert torch.equal(whitening.whiten, expected.whiten)
    saved = distilled.load(tmp_path / "a" / distill.DISTILLED_NAME)
    assert saved.preprocessing["kind"] == "zca"
    assert saved.preprocessing["zca_file"] == str(path.resolve())
    assert saved.settings["zca"] is True
    stamp = path.stat().st_mtime_ns
    run(config, tmp_path / "b", tiny_mnist)  # a second run reads the same file
    assert path.stat().st_mtime_ns == stamp
    # the dataset's default: MNIST is not whitened; another method refuses --zca
    run(small(iterations=1), tmp_path / "c", tiny_mnist)
    plain = distilled.load(tmp_path / "c" / distill.DISTILLED_NAME)
    assert plain.preprocessing["kind"] == "normalize" and plain.settings["zca"] is False
    with pytest.raises(DdppError, match="ZCA is only available with --method tm, kip"):
        distill.DistillConfig.from_preset("mnist", 1, method="dm", zca=True)
