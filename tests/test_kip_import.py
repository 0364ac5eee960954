"""KIP's ZCA variant and its published ``.npz`` sets: written as KIP's code writes them
(``numpy.savez(path, images=N×H×W×C, labels=N×K)``), imported with their label vectors."""

from __future__ import annotations

import math

import pytest
import torch

from ddpp_cli.engine import foreign, foreign_tools, zca
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.kip import npz

TARGET = foreign.ImportTarget(
    dataset="mnist",
    class_names=tuple(str(i) for i in range(3)),
    image_shape=(1, 4, 4),
    preprocessing={"kind": "normalize", "mean": [0.1307], "std": [0.3081]},
)


def kip_file(path, images_nhwc, labels):
    numpy = pytest.importorskip("numpy")
    numpy.savez(path, images=images_nhwc.numpy(), labels=labels.numpy())
    return path


def test_kip_zca_whitens_to_eigenvalues_s_over_s_plus_the_relative_ridge():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(400, 1, 3, 3, generator=generator) ** 2
    fitted = zca.fit_kip(images)
    # Independently: standardise, make every image zero-mean and unit-norm, Σ = XᵀX/N. Unit
    # rows make tr(Σ) = 1, so KIP's ridge 0.1 · tr(Σ)/D is 0.1/9; the whitened data's
    # covariance has the eigenvalues s/(s + 0.1/9) of Σ's eigenvalues s.
    x = (images - images.mean()) / images.std(unbiased=False)
    flat = x.reshape(400, 9).double()
    flat = flat - flat.mean(1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True)
    s = torch.linalg.eigvalsh(flat.T @ flat / 400)
    whitened = fitted.apply(images).reshape(400, 9).double()
    found = torch.linalg.eigvalsh(whitened.T @ whitened / 400)
    assert torch.allclose(found, s / (s + 0.1 / 9), atol=1e-5)
    assert fitted.variant == "kip" and fitted.regularization == zca.KIP_REGULARIZATION == 0.1


def test_kip_zca_forgets_brightness_and_contrast_and_survives_a_save(tmp_path):
    images = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    fitted = zca.fit_kip(images)
    x = images[:5]
    assert torch.allclose(fitted.apply(2.0 * x + 0.3), fitted.apply(x), atol=1e-5)  # layer norm
    loaded = zca.load(zca.save(fitted, tmp_path / "zca.safetensors", {"dataset": "mnist"}))
    assert (loaded.variant, loaded.channel_mean, loaded.channel_std) == (
        "kip", fitted.channel_mean, fitted.channel_std,
    )  # fmt: skip
    assert torch.equal(loaded.apply(x), fitted.apply(x))
    plain = zca.load(zca.save(zca.fit(images), tmp_path / "plain.safetensors"))
    assert plain.variant == "ddpp" and plain.channel_mean == ()


def test_a_kip_npz_imports_with_its_label_vectors(tmp_path):
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(4, 4, 4, 1, generator=generator)  # N×H×W×C, as KIP writes them
    labels = torch.tensor([[0.1, 0.9, -0.3], [0.8, 0.0, 0.2], [-0.2, 0.1, 0.7], [0.6, 0.5, 0.1]])
    path = kip_file(tmp_path / "ConvNet_ssize3_nozca_l_noaug_ckpt1000.npz", images, labels)
    assert foreign.find_files(path).kind == "kip"  # by its suffix
    found = foreign.import_set(path, TARGET)
    # argmax: 1, 0, 2, 0 → class-major order (stable): rows 1, 3, 0, 2
    order = [1, 3, 0, 2]
    assert torch.equal(found.labels, torch.tensor([0, 0, 1, 2]))
    assert torch.equal(found.targets, labels[order])
    assert torch.equal(found.images, images.permute(0, 3, 1, 2)[order])
    assert (found.label_mode, found.target_loss, found.source) == ("learned", "mse", "import-kip")
    assert found.settings["imported"]["hard_labels"] == "argmax of the label vectors"
    assert found.settings["imported"]["selection"] == "the set KIP saved (not selected by ddpp)"
    note = foreign.default_lr_note(found, 0.01, "default")
    assert note is not None and "MSE" in note and "argmax" in note


def test_the_npz_reader_refuses_what_kip_does_not_write(tmp_path):
    numpy = pytest.importorskip("numpy")
    numpy.savez(tmp_path / "a.npz", images=numpy.zeros((2, 4, 4, 1), numpy.float32))
    with pytest.raises(DdppError, match="no labels array"):
        npz.read_set(tmp_path / "a.npz")
    numpy.savez(tmp_path / "b.npz", images=numpy.zeros((2, 4, 4, 1), numpy.float32),
                labels=numpy.array([object(), object()]))  # fmt: skip
    with pytest.raises(DdppError, match="dtype"):
        npz.read_set(tmp_path / "b.npz")
    labels = numpy.eye(4, dtype=numpy.float32)[:2]  # 4 classes, the target has 3
    numpy.savez(tmp_path / "c.npz", images=numpy.zeros((2, 4, 4, 1), numpy.float32), labels=labels)
    with pytest.raises(DdppError, match="label vectors of 4 classes"):
        foreign.import_set(tmp_path / "c.npz", TARGET)
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(DdppError, match=r"not a \.npz archive"):
        npz.read_set(tmp_path / "d.npz")


def test_the_npy_reader_reads_what_numpy_writes(tmp_path):
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(24, dtype=numpy.float64).reshape(2, 3, 4) / 7
    numpy.save(tmp_path / "x.npy", array)
    found = npz.read_npy((tmp_path / "x.npy").read_bytes(), "x")
    assert found.dtype == torch.float64 and found.shape == (2, 3, 4)
    assert found[1, 2, 3].item() == pytest.approx(23 / 7) and math.isclose(found[0, 0, 1], 1 / 7)


def test_importing_for_a_dataset_fits_kips_zca_on_its_train_split(tiny_mnist, tmp_path):
    labels = torch.eye(10) * 0.9 - 0.1 / 1  # one row per class
    images = torch.randn(10, 28, 28, 1, generator=torch.Generator().manual_seed(3))
    path = kip_file(tmp_path / "set.npz", images, labels)
    found = foreign.import_for_dataset(
        path, "mnist", zca=True, zca_out=tmp_path / "zca.safetensors", data_root=tiny_mnist,
        download=False,
    )  # fmt: skip
    assert found.preprocessing["kind"] == "zca"
    assert zca.load(tmp_path / "zca.safetensors").variant == "kip"
    assert torch.equal(found.labels, torch.arange(10)) and found.targets.shape == (10, 10)
    assert foreign_tools.get_tool("kip").zca_variant == "kip"
