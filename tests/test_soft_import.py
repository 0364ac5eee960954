"""DATM's/PAD's soft-label sets (``images_best.pt`` + float ``labels_best.pt`` logits, DATM's
``distill/DATM.py`` layout) imported as soft-CE sets at temperature 1, and a soft-label
``ddpp export --format mtt`` imported back bit for bit."""

from __future__ import annotations

import pytest
import torch
from test_cli_coresets import FAST, mnist_images
from test_cli_evaluate import eval_json

from ddpp_cli.engine import distilled, export, foreign, store
from ddpp_cli.engine.distilled import DistilledSet
from ddpp_cli.engine.errors import DdppError
from ddpp_cli.engine.foreign import ImportTarget

CLASSES = 3
PREPROCESSING = {"kind": "normalize", "mean": [0.2861], "std": [0.353]}
TARGET = ImportTarget(
    dataset="fashionmnist",
    class_names=tuple(f"c{k}" for k in range(CLASSES)),
    image_shape=(1, 28, 28),
    preprocessing=PREPROCESSING,
)
# Row i's argmax class, deliberately not class-major: the import must reorder rows.
ARGMAX = [2, 0, 1, 0, 2, 1]


def datm_folder(folder, lr=0.0125):
    """A folder as DATM saves it: images (N, C, H, W), logits (N, K) float, lr 0-d."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(len(ARGMAX), 1, 28, 28, generator=generator)
    logits = torch.randn(len(ARGMAX), CLASSES, generator=generator)
    logits[torch.arange(len(ARGMAX)), torch.tensor(ARGMAX)] += 10.0  # a known argmax per row
    torch.save(images, folder / "images_best.pt")
    torch.save(logits, folder / "labels_best.pt")
    torch.save(torch.tensor(lr), folder / "lr_best.pt")
    return images, logits


def test_datm_folder_imports_as_soft_ce_set_with_rows_following_images(tmp_path):
    images, logits = datm_folder(tmp_path)
    found = foreign.import_set(tmp_path, TARGET)
    # Stable class-major order of the argmax written above: rows 1, 3 (class 0), 2, 5, 0, 4.
    order = [1, 3, 2, 5, 0, 4]
    assert torch.equal(found.images, images[order])
    assert torch.equal(found.targets, logits[order])
    assert found.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert (found.label_mode, found.target_loss, found.temperature) == ("learned", "soft-ce", 1.0)
    assert found.lr == float(torch.tensor(0.0125))
    record = found.settings["imported"]
    assert record["hard_labels"] == "argmax of the label vectors"
    note = foreign.default_lr_note(found, found.lr, "set")
    assert "DATM/PAD" in note and "temperature 1" in note and "argmax" in note
    saved = distilled.save(tmp_path / "set.safetensors", found)
    assert store.read(saved, (store.DISTILLED_FORMAT_V2,)).format == store.DISTILLED_FORMAT_V2
    loaded = distilled.load(saved)
    assert torch.equal(loaded.targets, logits[order]) and loaded.target_loss == "soft-ce"


def test_hard_labels_import_unchanged(tmp_path):
    images, _ = datm_folder(tmp_path)
    torch.save(torch.tensor(ARGMAX), tmp_path / "labels_best.pt")
    found = foreign.import_set(tmp_path, TARGET)
    assert found.targets is None and found.label_mode == "hard"
    assert torch.equal(found.images, images[[1, 3, 2, 5, 0, 4]])
    assert "DATM/PAD" not in (foreign.default_lr_note(found, found.lr, "set") or "")


def test_export_mtt_of_soft_set_imports_back_bit_for_bit(tmp_path):
    generator = torch.Generator().manual_seed(5)
    labels = torch.arange(CLASSES).repeat_interleave(2)
    targets = torch.randn(len(labels), CLASSES, generator=generator)
    targets[torch.arange(len(labels)), labels] += 10.0  # argmax = the class-major labels
    original = DistilledSet(
        images=torch.randn(len(labels), 1, 28, 28, generator=generator),
        labels=labels,
        lr=float(torch.tensor(0.02, dtype=torch.float32)),
        dataset="fashionmnist",
        class_names=TARGET.class_names,
        preprocessing=PREPROCESSING,
        source="distill",
        arch="convnet",
        targets=targets,
        label_mode="learned",
        target_loss="soft-ce",
        temperature=1.0,
    )
    export.export_set(original, "mtt", tmp_path / "out")
    back = foreign.import_set(tmp_path / "out", TARGET)
    assert torch.equal(back.images, original.images)
    assert torch.equal(back.targets, original.targets)
    assert torch.equal(back.labels, original.labels)
    assert back.lr == original.lr and back.temperature == 1.0


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (torch.zeros(6, 4), "(N, 3) logits"),
        (torch.zeros(6, 3, 1), "(N, 3) logits"),
        (torch.tensor([[0.0, 1.0, float("nan")]] * 6), "NaN or infinite"),
        (torch.tensor([[0.0, float("inf"), 1.0]] * 6), "NaN or infinite"),
        (torch.eye(3).repeat(3, 1)[:5], "6 images but 5 label vectors"),
    ],
)
def test_bad_float_labels_refused_in_one_line(tmp_path, logits, message):
    datm_folder(tmp_path)
    torch.save(logits, tmp_path / "labels_best.pt")
    with pytest.raises(DdppError) as caught:
        foreign.import_set(tmp_path, TARGET)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.usefixtures("one_thread")
def test_cli_evaluate_import_of_a_datm_folder_says_so_and_saves_version_2(tiny_mnist, tmp_path):
    images, labels = mnist_images(tiny_mnist)
    logits = torch.randn(len(labels), 10, generator=torch.Generator().manual_seed(7))
    logits[torch.arange(len(labels)), labels] += 10.0  # argmax = MNIST's labels, class-major
    folder = tmp_path / "datm"
    folder.mkdir()
    torch.save(images, folder / "images_best.pt")
    torch.save(logits, folder / "labels_best.pt")
    torch.save(torch.tensor(0.02), folder / "lr_best.pt")
    out = tmp_path / "soft.safetensors"
    args = ("--dataset", "mnist", "--data-dir", tiny_mnist, "--no-download", *FAST)
    payload = eval_json("--import", folder, *args, "--save", out, "--no-records")
    assert "DATM/PAD" in payload["lr_note"] and "temperature 1" in payload["lr_note"]
    saved = distilled.load(out)
    assert torch.equal(saved.images, images) and torch.equal(saved.targets, logits)
    assert torch.equal(saved.labels, labels)
    assert (saved.label_mode, saved.target_loss, saved.temperature) == ("learned", "soft-ce", 1.0)
