"""``ddpp export``: each format read back by a reader written here from the other tool's layout
(MTT's distill.py, DC's main.py, DD-Ranking's demos and get_dataset, torchvision's
ImageFolder), and MTT/DC exports imported back through ddpp's importer bit for bit."""

from __future__ import annotations

import gzip
import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import FASHION_MNIST_DIR, assert_one_line_error
from torchvision import transforms
from torchvision.datasets import ImageFolder
from typer.testing import CliRunner

from ddpp_cli.cli import app
from ddpp_cli.engine import distilled, export, foreign, zca
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.export import dc, ddranking

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
SHAPE = (3, 4, 4)
IPC = 2


def normalized(mean, std) -> dict:
    return {"kind": "normalize", "mean": list(mean), "std": list(std)}


def make_set(
    dataset: str = "cifar10", preprocessing: dict | None = None, *, classes: int = 10,
    lr: float | None = 0.0123, seed: int = 0, **labels,
) -> DistilledSet:  # fmt: skip
    """A class-major set of ``IPC`` images per class; its lr a float32 value, as a loaded set's."""
    generator = torch.Generator().manual_seed(seed)
    count = classes * IPC
    return DistilledSet(
        images=torch.randn(count, *SHAPE, generator=generator),
        labels=torch.arange(classes).repeat_interleave(IPC),
        lr=None if lr is None else float(torch.tensor(lr, dtype=torch.float32)),
        dataset=dataset,
        class_names=tuple(f"c{k}" for k in range(classes)),
        preprocessing=preprocessing or normalized(CIFAR10_MEAN, CIFAR10_STD),
        source="distill",
        arch="convnet",
        **labels,
    )


def soft(classes: int = 10, loss: str = "soft-ce", seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "targets": torch.randn(classes * IPC, classes, generator=generator),
        "label_mode": "teacher" if loss == "soft-ce" else "learned",
        "target_loss": loss,
        "temperature": 2.0 if loss == "soft-ce" else None,
    }


def target_of(chosen: DistilledSet, preprocessing: dict | None = None) -> foreign.ImportTarget:
    return foreign.ImportTarget(
        dataset=chosen.dataset,
        class_names=chosen.class_names,
        image_shape=SHAPE,
        preprocessing=preprocessing or chosen.preprocessing,
    )


def load(path: Path):
    """How the other tools read these files, and the only way allowed here: weights only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def renormalize(images, from_stats, to_stats) -> torch.Tensor:
    """Pixels x·std + mean under one normalisation, then (p − mean′)/std′, in float64."""
    (mean, std), (mean2, std2) = from_stats, to_stats

    def column(values):
        return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)

    pixels = images.double() * column(std) + column(mean)
    return (pixels - column(mean2)) / column(std2)


@pytest.fixture()
def zca_file(tmp_path) -> Path:
    pixels = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(5))
    return zca.save(zca.fit(pixels), tmp_path / "zca.safetensors", {"dataset": "cifar10"})


# -------------------------------------------------------------------------------------- mtt


def test_mtt_files_are_as_mtt_names_them_and_import_back_bit_for_bit(tmp_path):
    chosen = make_set()
    result = export.export_set(chosen, "mtt", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "images_best.pt", "labels_best.pt", "lr_best.pt",
    ]  # fmt: skip
    assert [p.name for p in result.files] == ["images_best.pt", "labels_best.pt", "lr_best.pt"]
    images, labels, lr = (load(out / n) for n in ("images_best.pt", "labels_best.pt", "lr_best.pt"))
    assert images.dtype == torch.float32 and torch.equal(images, chosen.images)
    # MTT's label_syn: int64, [0, 0, 1, 1, ..., 9, 9]
    assert labels.dtype == torch.int64 and labels.tolist() == [k for k in range(10) for _ in "ab"]
    assert lr.dtype == torch.float32 and lr.ndim == 0 and float(lr) == chosen.lr
    back = foreign.import_set(out, target_of(chosen))
    assert torch.equal(back.images, chosen.images) and torch.equal(back.labels, chosen.labels)
    assert back.lr == chosen.lr


def test_mtt_keeps_a_zca_set_whitened_and_imports_back_with_its_zca(tmp_path, zca_file):
    reference = distilled.zca_reference(zca_file)
    chosen = make_set(preprocessing=reference)
    result = export.export_set(chosen, "mtt", tmp_path / "out")
    assert torch.equal(load(tmp_path / "out" / "images_best.pt"), chosen.images)
    assert any("--zca-file" in note for note in result.notes)
    back = foreign.import_set(tmp_path / "out" / "images_best.pt", target_of(chosen, reference))
    assert torch.equal(back.images, chosen.images) and back.lr == chosen.lr


def test_mtt_normalises_cifar100_with_cifar10_stats_as_mtt_did(tmp_path):
    chosen = make_set("cifar100", normalized(CIFAR100_MEAN, CIFAR100_STD), classes=100)
    export.export_set(chosen, "mtt", tmp_path / "out")
    images = load(tmp_path / "out" / "images_best.pt")
    expected = renormalize(
        chosen.images, (CIFAR100_MEAN, CIFAR100_STD), (CIFAR10_MEAN, CIFAR10_STD)
    )
    assert torch.allclose(images.double(), expected, atol=1e-5, rtol=0)
    # ddpp's importer reads MTT's CIFAR-100 files as normalised with CIFAR-10's mean/std
    target = target_of(chosen, normalized(CIFAR10_MEAN, CIFAR10_STD))
    assert torch.equal(foreign.import_set(tmp_path / "out", target).images, images)


def test_mtt_writes_soft_labels_as_datm_logits_and_refuses_mse_targets(tmp_path):
    chosen = make_set(**soft())
    export.export_set(chosen, "mtt", tmp_path / "out")
    labels = load(tmp_path / "out" / "labels_best.pt")
    assert labels.dtype == torch.float32 and torch.equal(labels, chosen.targets)
    with pytest.raises(DdppError, match="ddranking"):
        export.export_set(make_set(**soft(loss="mse")), "mtt", tmp_path / "mse")
    assert not (tmp_path / "mse").exists()


def test_a_set_without_lr_writes_no_lr_file(tmp_path):
    result = export.export_set(make_set(lr=None), "mtt", tmp_path / "out")
    assert not (tmp_path / "out" / "lr_best.pt").exists()
    assert any("no learned lr" in note for note in result.notes)
    assert foreign.import_set(tmp_path / "out", target_of(make_set())).lr is None


# --------------------------------------------------------------------------------------- dc


def test_dc_res_file_is_main_py_layout_and_imports_back_bit_for_bit(tmp_path):
    chosen = make_set()
    export.export_set(chosen, "dc", tmp_path / "out")
    path = tmp_path / "out" / "res_DDPP_CIFAR10_ConvNet_2ipc.pt"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [path.name]
    content = load(path)
    # main.py: torch.save({'data': data_save, 'accs_all_exps': accs_all_exps}, ...)
    assert set(content) == {"data", "accs_all_exps"}
    assert content["accs_all_exps"] == {"ConvNet": []}
    [[images, labels]] = content["data"]
    assert torch.equal(images, chosen.images)
    assert labels.dtype == torch.int64 and torch.equal(labels, chosen.labels)
    back = foreign.import_set(path, target_of(chosen))
    assert torch.equal(back.images, chosen.images) and torch.equal(back.labels, chosen.labels)
    assert back.lr is None  # DC learns no lr


@pytest.mark.parametrize(
    ("settings", "source", "arch", "name"),
    [
        ({"method": "dsa"}, "distill", "convnet-d4", "res_DSA_CIFAR10_ConvNetD4_2ipc.pt"),
        ({"method": "tm"}, "distill", "convnet-bn", "res_DDPP_CIFAR10_ConvNetBN_2ipc.pt"),
        ({"imported": {"method": "dm"}}, "import-dc", None, "res_DM_CIFAR10_ConvNet_2ipc.pt"),
        ({}, "random", "resnet18", "res_DDPP_CIFAR10_resnet18_2ipc.pt"),
    ],
)
def test_dc_file_is_named_with_dcs_method_dataset_and_model(settings, source, arch, name):
    chosen = replace(make_set(), settings=settings, source=source, arch=arch)
    assert dc.file_name(chosen) == name


def test_dc_gets_hard_labels_and_normalised_pixels_of_a_zca_set(tmp_path, zca_file):
    chosen = make_set(preprocessing=distilled.zca_reference(zca_file), **soft())
    result = export.export_set(chosen, "dc", tmp_path / "out")
    [[images, labels]] = load(tmp_path / "out" / "res_DDPP_CIFAR10_ConvNet_2ipc.pt")["data"]
    assert torch.equal(labels, chosen.labels)
    whitening = zca.load(zca_file)
    # ZCA undone as y W⁻¹ + μ, then DC's (the dataset's own) mean/std
    pixels = chosen.images.reshape(len(images), -1).double() @ whitening.unwhiten.double()
    pixels = (pixels + whitening.mean.double()).reshape(chosen.images.shape)
    column = lambda v: torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1)  # noqa: E731
    expected = (pixels - column(CIFAR10_MEAN)) / column(CIFAR10_STD)
    assert torch.allclose(images.double(), expected, atol=1e-4, rtol=0)
    assert any("no learned lr: 0.0123 was left out" in n for n in result.notes)
    assert any("teacher soft labels (soft CE, T 2) were left out" in n for n in result.notes)


# -------------------------------------------------------------------------------- ddranking


def test_ddranking_files_as_its_demos_load_them(tmp_path):
    chosen = make_set()
    export.export_set(chosen, "ddranking", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "images.pt",
        "labels.pt",
        "lr.pt",
    ]
    # get_dataset normalises CIFAR10 with these very values: the tensor is the set's own
    assert torch.equal(load(out / "images.pt"), chosen.images)
    assert torch.equal(load(out / "labels.pt"), chosen.labels)
    assert load(out / "lr.pt").item() == chosen.lr  # compute_metrics: syn_lr.item()
    config = json.loads((out / "config.json").read_text())  # Config.from_file's json.load
    assert config["dataset"] == "CIFAR10" and config["ipc"] == IPC and config["im_size"] == [4, 4]
    assert config["use_zca"] is False and config["model_name"] == "ConvNet-3"
    assert "soft_label_mode" not in config  # a hard-label config (LabelRobustScoreHard)
    # DD-Ranking's default hard labels: ipc ones per class, class-major
    default = [i for i in range(10) for _ in range(config["ipc"])]
    assert load(out / "labels.pt").tolist() == default


def test_ddranking_cifar100_uses_cifar10_stats_and_soft_labels_go_to_labels_pt(tmp_path):
    chosen = make_set("cifar100", normalized(CIFAR100_MEAN, CIFAR100_STD), classes=100, **soft(100))
    export.export_set(chosen, "ddranking", tmp_path / "out")
    images = load(tmp_path / "out" / "images.pt")
    expected = renormalize(
        chosen.images, (CIFAR100_MEAN, CIFAR100_STD), (CIFAR10_MEAN, CIFAR10_STD)
    )
    assert torch.allclose(images.double(), expected, atol=1e-5, rtol=0)
    labels = load(tmp_path / "out" / "labels.pt")
    assert labels.shape == (200, 100) and torch.equal(labels, chosen.targets)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dataset"] == "CIFAR100" and config["soft_label_mode"] == "S"
    assert config["soft_label_criterion"] == "sce"
    assert config["loss_fn_kwargs"] == {"temperature": 2.0, "scale_loss": False}


def kornia_zca(pixels: torch.Tensor, eps: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's zca_mean as documented: unbiased covariance of the flattened batch, its SVD
    U S Uᵀ, T = U diag(1/√(S + ε)) Uᵀ; whitening (x − μ) T (here in float64)."""
    flat = pixels.reshape(len(pixels), -1).double()
    mean = flat.mean(dim=0)
    centred = flat - mean
    cov = centred.T @ centred / (len(flat) - 1)
    u, s, _ = torch.linalg.svd(cov)
    return mean, u @ torch.diag(1 / torch.sqrt(s + eps)) @ u.T


def test_ddranking_rewhitens_a_zca_set_with_its_own_zca_through_pixels(zca_file):
    chosen = make_set(preprocessing=distilled.zca_reference(zca_file))
    other_pixels = torch.rand(80, *SHAPE, generator=torch.Generator().manual_seed(9))
    images, use_zca, notes = ddranking.ddranking_images(
        chosen, None, lambda: zca.fit(other_pixels, ddranking.ZCA_EPSILON)
    )
    assert use_zca and notes
    own = zca.load(zca_file)
    flat = chosen.images.reshape(len(chosen.images), -1).double()
    pixels = flat @ own.unwhiten.double() + own.mean.double()
    mean, transform = kornia_zca(other_pixels)
    expected = ((pixels - mean) @ transform).reshape(chosen.images.shape)
    assert torch.allclose(images.double(), expected, atol=1e-3, rtol=0)
    # where DD-Ranking's ZCA is the set's own fit, the tensor is kept bit for bit
    same, _, kept = ddranking.ddranking_images(chosen, None, lambda: zca.load(zca_file))
    assert same is chosen.images and not kept


def native_zca_set(tmp_path: Path, fitted_on: str, regularization: float = 0.1) -> DistilledSet:
    """A CIFAR-10 set of 3 × 32 × 32 images whitened by a stand-in ZCA file (identity matrices)
    whose metadata says where it was fitted."""
    identity = torch.eye(3 * 32 * 32)
    whitening = zca.ZCA(torch.zeros(3072), identity, identity.clone(), (3, 32, 32), regularization)
    path = zca.save(
        whitening, tmp_path / f"{fitted_on}-{regularization}.zca", {"dataset": fitted_on}
    )
    images = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return replace(make_set(), images=images, preprocessing=distilled.zca_reference(path))


def test_a_ddpp_zca_of_the_dataset_at_its_size_is_ddrankings_without_the_data(tmp_path):
    def no_data():
        raise AssertionError("the train split must not be needed")

    chosen = native_zca_set(tmp_path, "cifar10")
    images, use_zca, notes = ddranking.ddranking_images(chosen, None, no_data)
    assert images is chosen.images and use_zca and not notes
    for other in (native_zca_set(tmp_path, "svhn"), native_zca_set(tmp_path, "cifar10", 0.2)):
        refit = zca.ZCA(torch.zeros(3072), 2 * torch.eye(3072), 0.5 * torch.eye(3072), (3, 32, 32))
        images, _, notes = ddranking.ddranking_images(other, None, lambda: refit)  # noqa: B023
        assert torch.equal(images, other.images * 2) and notes


def test_ddpp_zca_fit_is_kornias_zca_numerically():
    pixels = torch.rand(200, *SHAPE, generator=torch.Generator().manual_seed(3))
    fitted = zca.fit(pixels, 0.1)
    mean, transform = kornia_zca(pixels)
    assert torch.allclose(fitted.mean.double(), mean, atol=1e-6, rtol=0)
    assert torch.allclose(fitted.whiten.double(), transform, atol=1e-5, rtol=0)


def test_ddranking_refuses_a_dataset_it_has_no_loader_for(tmp_path):
    chosen = make_set("fashionmnist", normalized((0.2861,) * 3, (0.353,) * 3))
    with pytest.raises(DdppError, match="DD-Ranking has no loader for fashionmnist"):
        export.export_set(chosen, "ddranking", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ imagefolder


def test_imagefolder_reads_back_and_set_json_keeps_the_label_vectors(tmp_path):
    chosen = make_set(preprocessing=normalized((0.5,) * 3, (0.25,) * 3), **soft())
    export.export_set(chosen, "imagefolder", tmp_path / "out")
    folder = ImageFolder(str(tmp_path / "out"), transform=transforms.ToTensor())
    assert [label for _, label in folder.samples] == chosen.labels.tolist()
    first, _ = folder[0]
    pixels = (chosen.images[0] * 0.25 + 0.5).clamp(0, 1)
    assert torch.equal(first, torch.round(pixels * 255).to(torch.uint8).float() / 255)
    manifest = json.loads((tmp_path / "out" / "set.json").read_text())
    assert torch.equal(torch.tensor(manifest["targets"], dtype=torch.float32), chosen.targets)
    assert manifest["label_mode"] == "teacher" and manifest["temperature"] == 2.0
    assert math.isclose(manifest["lr"], chosen.lr, rel_tol=1e-7)


# --------------------------------------------------------------------------------- command


def write_set(tmp_path: Path, chosen: DistilledSet) -> Path:
    return distilled.save(tmp_path / "set.safetensors", chosen)


def test_cli_exports_each_format_into_a_new_folder(tmp_path):
    path = write_set(tmp_path, make_set())
    runner = CliRunner()
    for name in export.list_formats():
        out = tmp_path / name
        result = runner.invoke(app, ["export", str(path), "--format", name, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"export: {out}" in result.output
        assert not list(out.rglob("*.tmp"))  # every file went through an atomic write
    back = foreign.import_set(tmp_path / "mtt", target_of(make_set()))
    assert torch.equal(back.images, make_set().images)


def test_cli_refuses_a_busy_folder_and_an_unknown_format_in_one_line(tmp_path):
    path = write_set(tmp_path, make_set())
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(path), "--format", "mtt", "--out", str(busy)])
    assert_one_line_error(result, str(busy), "notes.txt", "new or empty")
    done = tmp_path / "done"
    assert runner.invoke(app, ["export", str(path), "-f", "dc", "-o", str(done)]).exit_code == 0
    result = runner.invoke(app, ["export", str(path), "-f", "dc", "-o", str(done)])
    assert_one_line_error(
        result, f"{done} is not empty (it holds res_DDPP_CIFAR10_ConvNet_2ipc.pt)"
    )
    assert_one_line_error(
        runner.invoke(app, ["export", str(path), "-f", "dc", "-o", str(path)]), "is a file"
    )
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    result = runner.invoke(app, ["export", str(path), "-f", "npz", "--out", str(tmp_path / "x")])
    assert_one_line_error(result, "unknown export format 'npz'", "mtt, dc, ddranking, imagefolder")


def test_ddranking_orders_a_set_class_major_and_notes_unequal_counts(tmp_path):
    chosen = make_set()
    order = torch.tensor([2, 0, 4, 1, 3, 5, *range(6, 20)])  # classes 1, 0, 2, 0, 1, 2, …
    keep = torch.ones(20, dtype=torch.bool)
    keep[19] = False  # class 9 keeps one image
    shuffled = replace(
        chosen, images=chosen.images[order][keep[order]], labels=chosen.labels[order][keep[order]]
    )
    result = export.export_set(shuffled, "ddranking", tmp_path / "out")
    labels = load(tmp_path / "out" / "labels.pt")
    assert labels.tolist() == [k for k in range(10) for _ in range(2 if k < 9 else 1)]
    # stable: each class's images keep their order in the set
    assert torch.equal(load(tmp_path / "out" / "images.pt"), chosen.images[:19])
    assert any("classes hold 1 to 2 images" in n for n in result.notes)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["ipc"] == 2


def read_idx_images(path: Path, first: int | None = None) -> torch.Tensor:
    """An IDX image file (MNIST's container: magic, 3 big-endian sizes, uint8 pixels) in [0, 1];
    only its ``first`` images where given."""
    raw = gzip.decompress(path.read_bytes())
    count, rows, cols = struct.unpack(">III", raw[4:16])
    count = count if first is None else min(first, count)
    pixels = torch.frombuffer(bytearray(raw[16 : 16 + count * rows * cols]), dtype=torch.uint8)
    return pixels.reshape(count, 1, rows, cols).double() / 255


def test_ddranking_zca_is_fitted_on_the_whole_train_split_in_unit_range(tiny_mnist):
    fitted = ddranking.fit_ddranking_zca("mnist", tiny_mnist, download=False)
    mean, transform = kornia_zca(read_idx_images(tiny_mnist / "train-images-idx3-ubyte.gz"))
    assert fitted.regularization == 0.1 and fitted.shape == (1, 28, 28)
    assert torch.allclose(fitted.mean.double(), mean, atol=1e-6, rtol=0)
    assert torch.allclose(fitted.whiten.double(), transform, atol=1e-4, rtol=0)


def test_a_set_with_label_vectors_is_told_where_they_went(tmp_path):
    result = export.export_set(make_set(**soft()), "ddranking", tmp_path / "out")
    assert result.notes[-1] == (
        "the set's teacher soft labels (soft CE, T 2) are in labels.pt as the (N, K) soft labels "
        "its soft-label evaluation loads."
    )


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs the Fashion-MNIST IDX files")
def test_real_fashion_mnist_set_exports_and_imports_back_bit_for_bit(tmp_path):
    """Two real train images per class, normalised as ddpp does, through the CLI and back through
    ``import_for_dataset`` on the real data."""
    images = read_idx_images(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz", 200).float()
    raw = gzip.decompress((FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").read_bytes())
    classes = torch.frombuffer(bytearray(raw[8:208]), dtype=torch.uint8).long()
    chosen_index = torch.cat([torch.nonzero(classes == k)[:2, 0] for k in range(10)])
    chosen = DistilledSet(
        images=(images[chosen_index] - 0.2861) / 0.353,
        labels=classes[chosen_index],
        lr=float(torch.tensor(0.01, dtype=torch.float32)),
        dataset="fashionmnist",
        class_names=tuple(f"c{k}" for k in range(10)),
        preprocessing=normalized((0.2861,), (0.353,)),
    )
    path = write_set(tmp_path, chosen)
    for name in ("mtt", "dc"):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["export", str(path), "-f", name, "-o", str(out)])
        assert result.exit_code == 0, result.output
        back = foreign.import_for_dataset(
            out, "fashionmnist", data_root=FASHION_MNIST_DIR, download=False
        )
        assert torch.equal(back.images, chosen.images) and torch.equal(back.labels, chosen.labels)
        assert back.preprocessing == chosen.preprocessing
        assert back.lr == (chosen.lr if name == "mtt" else None)
